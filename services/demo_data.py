"""The demo consortium's data: three sites, three vendors, subjects and weekly phantoms.

Subjects are scanned from the realistic head of `services/demo_head.py` with each site's
effects; headers carry each vendor's identity and typical series names (Siemens BOLD and
phantom runs as MOSAIC images). Two scanners misbehave on purpose: one slowly loses SFNR
on its weekly fBIRN phantom after the QC baseline (`DRIFT_AFTER_WEEK` sessions), one site
acquires its T1w with a repetition time far outside the protocol's tolerance.
Deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset

from services.demo_head import Array, SiteEffects, sample_head, scanned
from services.synthetic import (
    BOLD_EPI,
    T1_MPRAGE,
    ScannerSpec,
    SeriesSpec,
    StudySpec,
    Subject,
    fbirn_phantom,
    iter_instances,
)

Vendor = Literal["siemens", "ge", "philips"]
# The QC control chart freezes its baseline after this many phantom sessions
# (qc_service.app.BASELINE_SESSIONS); the drifting scanner starts drifting after it.
DRIFT_AFTER_WEEK = 8
FIRST_WEEK = date(2026, 6, 1)  # a Monday; week w is scanned FIRST_WEEK + 7 (w - 1) days


@dataclass(frozen=True)
class VendorNames:
    """What a scanner of this vendor typically writes into the headers."""

    t1_description: str
    t1_sequence: str
    bold_description: str
    bold_sequence: str
    bold_mosaic: bool  # Siemens classic EPI: one MOSAIC instance per volume


VENDOR_NAMES: dict[Vendor, VendorNames] = {
    "siemens": VendorNames("t1_mprage_sag_p2_iso", "*tfl3d1_16ns", "ep2d_bold_rest",
                           "epfid2d1_64", bold_mosaic=True),
    "ge": VendorNames("Sag T1 3D BRAVO", "efgre3d", "rsfMRI BOLD", "epiRT", bold_mosaic=False),
    "philips": VendorNames("T1W_3D_TFE", "T1TFE", "fMRI_rest_BOLD", "FEEPI",
                           bold_mosaic=False),
}


@dataclass(frozen=True)
class DemoScanner:
    site: str
    scanner_id: str
    ae_title: str
    vendor: Vendor
    identity: ScannerSpec
    effects: SiteEffects
    t1_repetition_time_ms: float = 2300.0  # the protocol says 2300 +- 1 %
    phantom_drift_per_week: float = 0.0  # fractional SFNR loss per week after the baseline

    @property
    def deviates(self) -> bool:
        return abs(self.t1_repetition_time_ms - 2300.0) > 23.0

    @property
    def drifts(self) -> bool:
        return self.phantom_drift_per_week > 0


CONSORTIUM: tuple[DemoScanner, ...] = (
    DemoScanner(
        site="milan", scanner_id="milan-prisma", ae_title="MILANPRISMA", vendor="siemens",
        identity=ScannerSpec(manufacturer="SIEMENS", model="Prisma", serial="166012",
                             software="syngo MR E11", station_name="MRC-PRISMA-1",
                             institution="Ospedale Niguarda"),
        effects=SiteEffects(intensity_scale=1.0, bias_amplitude=0.15, noise_sigma=12.0),
    ),
    DemoScanner(
        site="naples", scanner_id="naples-signa", ae_title="NAPLESSIGNA", vendor="ge",
        identity=ScannerSpec(manufacturer="GE MEDICAL SYSTEMS", model="SIGNA Premier",
                             serial="0000007351MR1", software="27\\LX\\MR Software release:"
                             "RX27.0_R02_1831.a", station_name="NAPMR01",
                             institution="Policlinico Federico II"),
        effects=SiteEffects(intensity_scale=0.82, bias_amplitude=0.28, noise_sigma=18.0,
                            bias_direction=(-0.3, 0.6, 0.4)),
        phantom_drift_per_week=0.06,
    ),
    DemoScanner(
        site="leiden", scanner_id="leiden-ingenia", ae_title="LEIDENINGENIA", vendor="philips",
        identity=ScannerSpec(manufacturer="Philips Medical Systems", model="Ingenia",
                             serial="45123", software="5.7.1\\5.7.1.1", station_name="LUMC-MR3",
                             institution="Leids Universitair Medisch Centrum"),
        effects=SiteEffects(intensity_scale=1.21, bias_amplitude=0.2, noise_sigma=15.0,
                            bias_direction=(0.2, -0.5, 0.6)),
        t1_repetition_time_ms=2000.0,  # the protocol deviation: TR 13 % short
    ),
)


@dataclass(frozen=True)
class DemoSizes:
    subjects: int = 2  # per site
    weeks: int = 12  # weekly phantom sessions per scanner
    t1_slices: int = 160  # 1 mm axial slices of 256 x 256
    bold_slices: int = 16  # 4 mm slices of 64 x 64 (3 mm pixels)
    bold_volumes: int = 20
    phantom_slices: int = 3
    phantom_volumes: int = 30


QUICK = DemoSizes(subjects=1, weeks=10, t1_slices=120, bold_slices=12, bold_volumes=16,
                  phantom_volumes=20)


@dataclass(frozen=True)
class DemoStudy:
    scanner: DemoScanner
    kind: Literal["subject", "phantom"]
    week: int
    label: str
    spec: StudySpec

    @property
    def instance_count(self) -> int:
        return sum(series.slices * series.volumes for series in self.spec.series)


def plan(scanners: tuple[DemoScanner, ...], sizes: DemoSizes, *, seed: str
         ) -> dict[str, list[DemoStudy]]:
    """Every scanner's studies in acquisition order: a phantom each week, subjects spread."""
    schedule: dict[str, list[DemoStudy]] = {}
    for scanner in scanners:
        studies: list[DemoStudy] = []
        subject_weeks = _spread(sizes.subjects, sizes.weeks)
        for week in range(1, sizes.weeks + 1):
            studies.append(_phantom(scanner, sizes, week=week, seed=seed))
            for number, subject_week in enumerate(subject_weeks, start=1):
                if subject_week == week:
                    studies.append(_subject(scanner, sizes, number=number, week=week, seed=seed))
        schedule[scanner.scanner_id] = studies
    return schedule


def _spread(count: int, weeks: int) -> list[int]:
    return [1 + (i * weeks) // max(1, count) for i in range(count)]


def _study_date(week: int) -> str:
    return (FIRST_WEEK + timedelta(days=7 * (week - 1))).strftime("%Y%m%d")


def _phantom(scanner: DemoScanner, sizes: DemoSizes, *, week: int, seed: str) -> DemoStudy:
    rng = np.random.default_rng(zlib.crc32(f"{seed}/{scanner.scanner_id}/phantom/{week}".encode()))
    weeks_drifting = max(0, week - DRIFT_AFTER_WEEK) if scanner.drifts else 0
    # The drifting scanner's temporal noise grows (SFNR falls) and its signal sags a little.
    loss = scanner.phantom_drift_per_week * weeks_drifting
    signal = 1000.0 * scanner.effects.intensity_scale * (1 + rng.normal(0, 0.003)) * (1 - loss / 3)
    noise = 10.0 * scanner.effects.intensity_scale / max(0.05, 1 - loss)
    spec = fbirn_phantom(
        seed=f"{seed}/{scanner.scanner_id}/phantom/{week}", sessions_signal=signal,
        temporal_noise=noise, volumes=sizes.phantom_volumes, slices=sizes.phantom_slices,
    )
    subject = Subject(patient_name="FBIRN^PHANTOM", patient_id=f"PHANTOM-{scanner.ae_title}",
                      sex="O", age="")
    series = tuple(dataclasses.replace(s, repetition_time_ms=2000.0) for s in spec.series)
    if VENDOR_NAMES[scanner.vendor].bold_mosaic:
        series = tuple(_as_mosaic_series(s) for s in series)
    spec = dataclasses.replace(spec, subject=subject, scanner=scanner.identity,
                               study_date=_study_date(week), series=series)
    return DemoStudy(scanner, "phantom", week, f"fBIRN phantom week {week}", spec)


def follow_ups(scanners: tuple[DemoScanner, ...], sizes: DemoSizes, *, seed: str
               ) -> dict[str, list[DemoStudy]]:
    """Every subject of `plan` back for a second visit, the week after the last phantom."""
    return {
        scanner.scanner_id: [
            _subject(scanner, sizes, number=number, week=sizes.weeks + 1, seed=seed, visit=2)
            for number in range(1, sizes.subjects + 1)
        ]
        for scanner in scanners
    }


def _subject(scanner: DemoScanner, sizes: DemoSizes, *, number: int, week: int, seed: str,
             visit: int = 1) -> DemoStudy:
    subject_key = f"{seed}/{scanner.scanner_id}/subject/{number}"
    key = subject_key if visit == 1 else f"{subject_key}/visit/{visit}"  # a new study
    rng = np.random.default_rng(zlib.crc32(subject_key.encode()))  # the same person
    head_scale = float(np.clip(rng.normal(1.0, 0.04), 0.9, 1.1))
    age = int(rng.integers(55, 80))
    subject = Subject(
        patient_name=f"{scanner.site.upper()}^SUBJECT{number:02d}",
        patient_id=f"{scanner.ae_title}-{number:03d}", birth_date=f"{2026 - age}0115",
        sex="F" if rng.random() < 0.5 else "M", age=f"{age:03d}Y",
    )
    names = VENDOR_NAMES[scanner.vendor]
    t1 = dataclasses.replace(
        T1_MPRAGE, description=names.t1_description, protocol_name=names.t1_description,
        sequence_name=names.t1_sequence, slices=sizes.t1_slices,
        repetition_time_ms=scanner.t1_repetition_time_ms,
        image=_t1_images(scanner.effects, head_scale, sizes.t1_slices, key),
    )
    bold = _bold_series(scanner, sizes, head_scale, key)
    spec = StudySpec(seed=key, subject=subject, scanner=scanner.identity,
                     study_date=_study_date(week), series=(t1, bold))
    visit_label = "" if visit == 1 else f", visit {visit}"
    return DemoStudy(scanner, "subject", week,
                     f"subject {number:02d} (T1w + rs-fMRI{visit_label})", spec)


def _t1_images(effects: SiteEffects, head_scale: float, slices: int, key: str
               ) -> _SliceSource:
    return _SliceSource(kind="t1", effects=effects, head_scale=head_scale,
                        shape=(256, 256, slices), voxel_mm=(1.0, 1.0, 1.0), key=key)


@dataclass(frozen=True)
class _SliceSource:
    """`SeriesSpec.image`: the site-scanned volume, built once, served slice by slice."""

    kind: Literal["t1", "t2star"]
    effects: SiteEffects
    head_scale: float
    shape: tuple[int, int, int]
    voxel_mm: tuple[float, float, float]
    key: str
    volumes: int = 1
    mosaic_tiles: int = 0  # > 0: every instance is one volume as a tiles x tiles mosaic

    def __call__(self, volume: int, slice_index: int, rng: np.random.Generator) -> Array:
        frame = _volume_frame(self, volume)
        if self.mosaic_tiles:
            return _mosaic(frame, self.mosaic_tiles)
        return _axial_image(frame, slice_index)


@lru_cache(maxsize=2)
def _clean_volume(source: _SliceSource) -> Array:
    clean = sample_head(source.kind, shape=source.shape, voxel_mm=source.voxel_mm,
                        head_scale=source.head_scale)
    rng = np.random.default_rng(zlib.crc32(f"{source.key}/{source.kind}".encode()))
    return scanned(clean, source.effects, rng)


def _volume_frame(source: _SliceSource, volume: int) -> Array:
    base = _clean_volume(source)
    if source.volumes == 1:
        return base
    # rs-fMRI: low-frequency fluctuation of the global signal plus thermal noise per frame.
    rng = np.random.default_rng(zlib.crc32(f"{source.key}/frame/{volume}".encode()))
    fluctuation = 1 + 0.004 * np.sin(2 * np.pi * volume / 12.0)
    noise = rng.normal(0, source.effects.noise_sigma * 0.8, base.shape).astype(np.float32)
    return np.asarray(np.abs(base * fluctuation + noise), dtype=np.float32)


def _axial_image(frame: Array, slice_index: int) -> Array:
    """One axial slice as DICOM pixels: the RAS array flipped so that columns run to the
    patient's left and rows to posterior (ImageOrientationPatient 1\\0\\0\\0\\1\\0)."""
    return np.asarray(frame[::-1, ::-1, slice_index].T)


def _mosaic(frame: Array, tiles: int) -> Array:
    x, y, z = frame.shape
    canvas = np.zeros((tiles * y, tiles * x), dtype=np.float32)
    for k in range(z):
        row, col = divmod(k, tiles)
        canvas[row * y:(row + 1) * y, col * x:(col + 1) * x] = _axial_image(frame, k)
    return canvas


def _bold_series(scanner: DemoScanner, sizes: DemoSizes, head_scale: float, key: str
                 ) -> SeriesSpec:
    names = VENDOR_NAMES[scanner.vendor]
    source = _SliceSource(kind="t2star", effects=scanner.effects, head_scale=head_scale,
                          shape=(64, 64, sizes.bold_slices), voxel_mm=(3.0, 3.0, 4.0),
                          key=key, volumes=sizes.bold_volumes)
    bold = dataclasses.replace(
        BOLD_EPI, description=names.bold_description, protocol_name=names.bold_description,
        sequence_name=names.bold_sequence, slice_thickness_mm=4.0, pixel_spacing_mm=(3.0, 3.0),
        volumes=sizes.bold_volumes, slices=sizes.bold_slices, image=source,
    )
    if not names.bold_mosaic:
        return bold
    tiles = int(np.ceil(np.sqrt(sizes.bold_slices)))
    return dataclasses.replace(bold, slices=1, rows=64 * tiles, columns=64 * tiles,
                               image=dataclasses.replace(source, mosaic_tiles=tiles))


@dataclass(frozen=True)
class _TiledSlices:
    """`SeriesSpec.image` of a mosaic: another series' slices tiled into one image."""

    image: Any  # (volume, slice, rng) -> (rows, columns)
    slices: int
    tiles: int

    def __call__(self, volume: int, slice_index: int, rng: np.random.Generator) -> Array:
        tiles = [np.asarray(self.image(volume, k, rng)) for k in range(self.slices)]
        rows, columns = tiles[0].shape
        canvas = np.zeros((self.tiles * rows, self.tiles * columns), dtype=np.float32)
        for k, tile in enumerate(tiles):
            row, col = divmod(k, self.tiles)
            canvas[row * rows:(row + 1) * rows, col * columns:(col + 1) * columns] = tile
        return canvas


def _as_mosaic_series(series: SeriesSpec) -> SeriesSpec:
    tiles = int(np.ceil(np.sqrt(series.slices)))
    return dataclasses.replace(
        series, slices=1, rows=series.rows * tiles, columns=series.columns * tiles,
        image=_TiledSlices(series.image, series.slices, tiles))


def mosaic_slices(series: SeriesSpec) -> int | None:
    """Slices per instance when the series is a Siemens mosaic, else None."""
    image = series.image
    if isinstance(image, _TiledSlices):
        return image.slices
    if isinstance(image, _SliceSource) and image.mosaic_tiles:
        return image.shape[2]
    return None


# --- DICOM -----------------------------------------------------------------------------


def instances(study: DemoStudy) -> Iterator[Dataset]:
    """The study's instances as the scanner writes them (vendor private blocks, mosaics)."""
    scanner = study.scanner
    for ds in iter_instances(study.spec):
        ds.InstitutionAddress = f"{scanner.identity.institution}, {scanner.site.title()}"
        if scanner.vendor != "siemens":
            _drop_private_group(ds, 0x0029)  # the Siemens CSA block iter_instances writes
        slices = mosaic_slices(study.spec.series[int(ds.SeriesNumber) - 1])
        if slices is not None:
            _as_siemens_mosaic(ds, slices=slices)
        yield ds


def _as_siemens_mosaic(ds: Dataset, *, slices: int) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0A, "US", slices)  # NumberOfImagesInMosaic
    ds.SpacingBetweenSlices = ds.SliceThickness


def _drop_private_group(ds: Dataset, group: int) -> None:
    for tag in [element.tag for element in ds if element.tag.group == group]:
        del ds[tag]
