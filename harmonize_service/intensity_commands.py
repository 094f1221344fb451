"""`harmonet harmonize intensity-fit | intensity-apply | intensity-install`: T1w intensity
standardisation on NIfTI files or DICOM series folders, offline or for the service."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_actions(actions: Any) -> None:
    fit = actions.add_parser("intensity-fit",
                             help="learn Nyúl landmarks on a reference cohort of T1w images")
    fit.add_argument("images", nargs="+", type=Path,
                     help="NIfTI files or folders holding one DICOM series each")
    fit.add_argument("--out", type=Path, required=True, help="model JSON to write")
    fit.set_defaults(handler=_fit)
    apply = actions.add_parser("intensity-apply", help="standardise one T1w image to NIfTI")
    apply.add_argument("image", type=Path, help="a NIfTI file or a DICOM series folder")
    apply.add_argument("--method", choices=("nyul", "whitestripe"), default="nyul")
    apply.add_argument("--model", type=Path, help="Nyúl model JSON (method nyul)")
    apply.add_argument("--out", type=Path, required=True, help="NIfTI (.nii.gz) to write")
    apply.set_defaults(handler=_apply)
    install = actions.add_parser("intensity-install",
                                 help="store a Nyúl model and make the service use it")
    install.add_argument("model", type=Path)
    install.add_argument("--wait", type=float, default=60.0,
                         help="while `harmonet up` runs: seconds to wait for it to switch")
    install.set_defaults(handler=_install)


def _load(path: Path) -> Any:
    from services.volume import load_dicom_series, load_nifti

    if path.is_dir():
        return load_dicom_series(sorted(p for p in path.rglob("*") if p.is_file()))
    return load_nifti(path)


def _fit(args: argparse.Namespace) -> int:
    from harmonize_service.intensity import IntensityError, fit_nyul, foreground_mask
    from services.volume import VolumeError

    try:
        volumes = [_load(path).data for path in args.images]
        model = fit_nyul(volumes, [foreground_mask(v) for v in volumes])
    except (IntensityError, VolumeError) as exc:
        print(f"harmonize intensity-fit: {exc}", file=sys.stderr)
        return 1
    args.out.write_text(model.to_json(), encoding="utf-8")
    print(f"{len(volumes)} reference images, model {model.version}")
    return 0


def _apply(args: argparse.Namespace) -> int:
    from harmonize_service.intensity import (
        IntensityError,
        NyulModel,
        apply_nyul,
        apply_whitestripe,
        fit_whitestripe,
        foreground_mask,
        nifti_gz,
    )
    from services.volume import VolumeError

    if args.method == "nyul" and args.model is None:
        print("harmonize intensity-apply: --model is needed for --method nyul", file=sys.stderr)
        return 2
    try:
        volume = _load(args.image)
        mask = foreground_mask(volume.data)
        if args.method == "nyul":
            model = NyulModel.from_json(args.model.read_text(encoding="utf-8"))
            data = apply_nyul(model, volume.data, mask)
        else:
            data = apply_whitestripe(fit_whitestripe(volume.data, mask), volume.data)
    except (IntensityError, VolumeError, OSError) as exc:
        print(f"harmonize intensity-apply: {exc}", file=sys.stderr)
        return 1
    args.out.write_bytes(nifti_gz(data, volume.affine))
    return 0


def _install(args: argparse.Namespace) -> int:
    from harmonize_service.commands import install_artifact
    from harmonize_service.images import CURRENT_KEY, put_intensity_model
    from harmonize_service.intensity import IntensityError

    return install_artifact(
        args.model, action="intensity-install", what="intensity model",
        errors=(IntensityError,), put=put_intensity_model, pointer=CURRENT_KEY, wait=args.wait,
    )
