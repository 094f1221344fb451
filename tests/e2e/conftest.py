from tests.support.disk import tiny_disk

__all__ = ["tiny_disk"]
