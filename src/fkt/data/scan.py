"""Find every unreadable image before training, all at once: a run then stops (or skips them) at
its start with the whole list, not hours later in a loader worker on the first bad file."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fkt.data.base import DataBundle, examples
from fkt.errors import UserError
from fkt.io import atomic_write_text

DRAFT = (64, 64)  # a JPEG decoded at up to 1/8 scale still reads every byte, so truncation shows
ANNOUNCE = 1000  # sets this large say what the pause at the start is


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def check_image(path: Path) -> str | None:
    """Why `path` cannot be used as an image, or None. A JPEG is decoded at reduced scale, a PNG's
    chunk CRCs are verified without inflating, anything else is decoded in full."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
    except FileNotFoundError:
        return "broken symlink" if path.is_symlink() else "file not found"
    except OSError as err:
        return f"cannot read ({err.strerror})"
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft("RGB", DRAFT)
                img.load()
            elif img.format == "PNG":
                img.verify()
            else:
                img.load()
    except UnidentifiedImageError:
        return "not an image"
    except PermissionError:
        return "cannot read (permission denied)"
    except Image.DecompressionBombError as err:
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        return f"too large ({int(pixels[1]):,} pixels)" if pixels else "too large"
    except Exception as err:  # noqa: BLE001 - broken files raise OSError, SyntaxError, ValueError, struct.error...
        return f"truncated or corrupt ({one_line(err)})"
    return None


def scan_images(files: list[Path], workers: int | None = None) -> list[tuple[Path, str]]:
    """(path, reason) of every file that cannot be decoded, in the order given. Threads, because
    Pillow releases the GIL while it reads and decodes."""
    workers = workers or min(32, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        reasons = list(pool.map(check_image, files))
    return [(path, reason) for path, reason in zip(files, reasons) if reason is not None]


def screen_bundle(bundle: DataBundle, skip: bool, report: Path | None,
                  bad: list[tuple[Path, str]] | None = None) -> None:
    """Scan a file-based bundle (unless `bad`, its unreadable files, is known: the image cache found
    them). Bad images stop the run with one line (all of them written to `report`, one
    `path<TAB>reason` a line), or with `skip` are left out and kept in `bundle.skipped`."""
    sets = {name: images for name, images in (("train", bundle.train), ("test", bundle.test),
                                              ("unlabelled", bundle.unlabelled))
            if images is not None and images.files}
    files = [path for images in sets.values() for path in images.files]
    if not files:
        return
    if bad is None:
        if len(files) >= ANNOUNCE:
            print(f"[fkt] checking {len(files):,} image files (data.scan_images=false skips this)", flush=True)
        bad = scan_images(files)
    if report is not None:
        if bad:
            atomic_write_text(report, "".join(f"{path}\t{reason}\n" for path, reason in bad))
        else:
            report.unlink(missing_ok=True)  # from an earlier attempt, since fixed
    if not bad:
        return
    listed = f"all listed in {report}" if report is not None else f"{len(bad)} in all"
    if not skip:
        shown = examples([f"{path}: {reason}" for path, reason in bad], sep="; ")
        raise UserError(f"{len(bad)} unreadable image file(s): {shown} ({listed}); "
                        "fix or remove them, or pass --skip-bad-images to leave them out")
    dropped = {path for path, _ in bad}
    for name, images in sets.items():
        kept = images.subset(np.flatnonzero([path not in dropped for path in images.files]))
        if name == "unlabelled":
            if not len(kept):
                raise UserError(f"--unlabelled-root: none of its {len(images)} image(s) is readable ({listed})")
            setattr(bundle, name, kept)
            continue
        before, after = (np.bincount(s.targets, minlength=len(bundle.classes)) for s in (images, kept))
        emptied = np.flatnonzero((before > 0) & (after == 0))
        if len(emptied):
            raise UserError(f"class {bundle.classes[emptied[0]]!r}: none of its {before[emptied[0]]} image(s) "
                            f"in {name} is readable ({listed})")
        setattr(bundle, name, kept)
    bundle.skipped = [(str(path), reason) for path, reason in bad]
    print(f"[fkt] skipped {len(bad)} unreadable image(s) ({listed})", flush=True)
