"""Run every fault and bad-input test and write docs/faults.md from the results.

Each row names a fault or a bad input, what fkt does about it, and the test that tries it;
"handled" counts the rows whose tests passed in this run, so the table cannot claim more
than was tried. Usage: .venv/bin/python scripts/fault_table.py [--out docs/faults.md]
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (group, fault or input, what fkt does, test ids: "file::name" or "file::name[param]")
ROWS: list[tuple[str, str, str, list[str]]] = [
    ("Faults", "SIGKILL mid-epoch, then the same command again (`--resume` or not)",
     "resumes from the last mid-epoch `last.ckpt` (model, optimizer, scheduler, loop counters, data position, "
     "RNG); metrics.json and every weight equal an uninterrupted run's",
     ["test_faults.py::test_sigkill_mid_epoch_then_rerun_equals_an_uninterrupted_run"]),
    ("Faults", "Ctrl-C during training",
     "finishes the step, saves `last.ckpt`, exits 130 with one line; the rerun ends bit-identical to an "
     "uninterrupted run", ["test_faults.py::test_ctrl_c_saves_a_checkpoint_exits_cleanly_and_resumes_exactly"]),
    ("Faults", "Disk full while writing a JSON file", "the previous file is intact, no temp file is left",
     ["test_faults.py::test_a_full_disk_leaves_the_previous_json_intact"]),
    ("Faults", "Disk full while writing a checkpoint", "the previous checkpoint is intact and loads",
     ["test_faults.py::test_a_full_disk_leaves_the_previous_checkpoint_intact"]),
    ("Faults", "Disk full at the end of a run (metrics.json)",
     "one line naming the file, exit 4; checkpoints kept; the rerun evaluates without training again",
     ["test_faults.py::test_a_full_disk_during_a_run_is_one_line_and_keeps_the_checkpoints"]),
    ("Faults", "Loss becomes NaN or infinite",
     "stops before the optimizer step, names the stage, step and loss term, exit 3; the last good "
     "checkpoint is unchanged; no metrics.json",
     ["test_faults.py::test_nan_loss_stops_with_the_step_and_term_and_keeps_the_last_good_checkpoint"]),
    ("Faults", "Two runs on the same `--out` at once",
     "the second refuses in one line naming the holder's pid (a lock file), exit 2, writes nothing",
     ["test_faults.py::test_a_second_run_on_the_same_out_is_refused"]),
    ("Faults", "The lock holder is killed", "the kernel drops its lock; the rerun is not blocked",
     ["test_faults.py::test_the_lock_dies_with_its_holder"]),
    ("Faults", "A grid (`fkt reproduce`) interrupted between or inside cells",
     "finished cells are skipped, the interrupted one resumes",
     ["test_reproduce.py::test_grid_skips_finished_cells_and_resumes_interrupted_ones"]),
    ("Image folders", "Truncated or corrupt image, zero-byte file, text file named .jpg, broken symlink",
     "found by the scan before training, each with its reason",
     ["test_bad_input.py::test_scan_names_every_kind_of_bad_file"]),
    ("Image folders", "Several bad images",
     "all reported at once: a count and the first few in one line, the full list in bad_images.txt; exit 2",
     ["test_bad_input.py::test_bad_images_are_all_reported_at_once",
      "test_bad_input.py::test_cli_bad_images_exit_2_with_one_line"]),
    ("Image folders", "`--skip-bad-images`", "left out, counted in the log and in metrics.json",
     ["test_bad_input.py::test_skip_bad_images_leaves_them_out_and_records_them"]),
    ("Image folders", "Grayscale, LA, 1-bit, palette (with transparency), RGBA, CMYK, YCbCr, 16-bit, 32-bit, float",
     "just works: every mode becomes 8-bit RGB (16-bit scaled, not clipped)",
     ["test_bad_input.py::test_every_mode_decodes_to_rgb"]),
    ("Image folders", "Very large JPEG, EXIF rotation", "decoded at reduced scale near the target size; rotated",
     ["test_bad_input.py::test_exif_orientation_and_large_jpeg"]),
    ("Image folders", "Symlinked files and class folders, `.DS_Store`, `Thumbs.db`, `notes.txt`, upper-case extensions",
     "links followed (loops guarded), junk ignored with one note, `.JPG` read",
     ["test_bad_input.py::test_class_folders_follow_links_and_ignore_junk"]),
    ("Image folders", "Empty class folder", "one line naming the folder, exit 2",
     ["test_bad_input.py::test_class_folder_mistakes_are_one_line[empty class]"]),
    ("Image folders", "A single class", "one line: needs at least 2 classes",
     ["test_bad_input.py::test_class_folder_mistakes_are_one_line[one class]"]),
    ("Image folders", "Class folders differ between train and test", "one line with both lists",
     ["test_bad_input.py::test_class_folder_mistakes_are_one_line[test classes differ]"]),
    ("Image folders", "Missing `test/` (imagefolder) or `seg_test` (Intel)",
     "imagefolder carves a stratified test split and says so; Intel names the missing folder",
     ["test_data.py::test_imagefolder_without_test_carves_later",
      "test_bad_input.py::test_class_folder_mistakes_are_one_line[intel without seg_test]"]),
    ("APTOS CSV", "Missing columns", "one line naming the file and the columns",
     ["test_data.py::test_aptos_missing_column_is_named"]),
    ("APTOS CSV", "Labels outside 0-4", "one line with file:line and the value",
     ["test_data.py::test_aptos_label_outside_range"]),
    ("APTOS CSV", "Ids without an image", "one line with the count and the first few",
     ["test_bad_input.py::test_aptos_csv_mistakes_are_one_line[ids without image]"]),
    ("APTOS CSV", "Images without a row", "one line with the count and the first few",
     ["test_bad_input.py::test_aptos_csv_mistakes_are_one_line[images without row]"]),
    ("APTOS CSV", "Duplicate ids, empty ids", "one line with both line numbers / the line",
     ["test_bad_input.py::test_aptos_csv_mistakes_are_one_line[duplicate id]",
      "test_bad_input.py::test_aptos_csv_mistakes_are_one_line[empty id]"]),
    ("Config and CLI", "Unknown keys, wrong types, unknown flags, unknown dataset, preset or method",
     "one line naming the field or flag, exit 2",
     ["test_cli.py::test_user_mistakes_get_one_clear_line", "test_config.py::test_bad_values_name_the_field"]),
    ("Config and CLI", "Negative or zero epochs, batch size, learning rate", "one line naming the field; nothing written",
     ["test_faults.py::test_run_mistakes_are_one_line_and_write_nothing[negative lr]",
      "test_faults.py::test_run_mistakes_are_one_line_and_write_nothing[zero lr]",
      "test_faults.py::test_run_mistakes_are_one_line_and_write_nothing[negative epochs]",
      "test_faults.py::test_run_mistakes_are_one_line_and_write_nothing[zero batch]"]),
    ("Config and CLI", "Batch size larger than the training images, a labelled batch larger than the labelled set",
     "capped to the set, with one note (in metrics.json's data_notes; config.yaml says what ran); batches that "
     "fit are untouched; a capped batch under 2 images: one line naming the flag, nothing written",
     ["test_own_data.py::test_a_pool_batch_larger_than_the_pool_is_capped_and_fitting_batches_are_not_touched",
      "test_own_data.py::test_the_no_preset_command_fits_a_300_image_folder",
      "test_own_data.py::test_a_capped_batch_under_two_images_is_refused_in_one_line"]),
    ("Config and CLI", "`--devices` beyond what exists, an unknown accelerator",
     "one line naming the flag and what the machine has; nothing written",
     ["test_faults.py::test_run_mistakes_are_one_line_and_write_nothing[devices beyond]",
      "test_faults.py::test_run_mistakes_are_one_line_and_write_nothing[unknown accelerator]"]),
    ("Config and CLI", "`--resume` with nothing to resume", "one line; nothing written",
     ["test_faults.py::test_run_mistakes_are_one_line_and_write_nothing[resume nothing]"]),
    ("Checkpoints", "A checkpoint from another backbone, method or number of classes in `--out`",
     "refused in one line naming the file",
     ["test_faults.py::test_a_bad_checkpoint_in_the_run_directory_is_refused[another backbone]",
      "test_faults.py::test_a_bad_checkpoint_in_the_run_directory_is_refused[other classes]",
      "test_reproduce.py::test_a_different_runs_checkpoint_is_not_resumed"]),
    ("Checkpoints", "A garbage or truncated `last.ckpt` in `--out`", "refused in one line naming the file",
     ["test_faults.py::test_a_bad_checkpoint_in_the_run_directory_is_refused[garbage]",
      "test_faults.py::test_a_bad_checkpoint_in_the_run_directory_is_refused[truncated]"]),
    ("Checkpoints", "`fkt evaluate` on a missing, garbage or foreign file", "one line naming the file",
     ["test_faults.py::test_evaluate_refuses_a_foreign_checkpoint", "test_cli.py::test_the_entry_point_gives_one_line_too"]),
    ("Checkpoints", "A crafted checkpoint whose pickle runs a shell command, given to `evaluate`, `predict`, "
     "`export`, `cam` or left in `--out` for a resume",
     "read as data (weights only): refused in one line naming the file and `--trust-checkpoint`; nothing runs "
     "(the control, with the flag, does run it)",
     ["test_safety.py::test_a_crafted_checkpoint_is_refused_and_runs_nothing",
      "test_safety.py::test_the_crafted_checkpoint_does_run_code_when_trusted"]),
    ("Checkpoints", "Every checkpoint fkt writes (each method, the SimCLR stage, a mid-epoch `last.ckpt`)",
     "loads as data", ["test_safety.py::test_every_checkpoint_fkt_writes_loads_as_data"]),
    ("Prediction", "Unreadable, missing or non-image files among `fkt predict`'s inputs",
     "each listed with its reason and skipped; exit 1; none readable: one line, exit 2, nothing written",
     ["test_predict.py::test_unreadable_files_are_listed_and_skipped",
      "test_predict.py::test_nothing_readable_is_one_line_and_writes_nothing"]),
    ("Config and CLI", "Malformed YAML in `--set`, and 60 random `--set` values over every config key "
     "(wrong types, out of range, unicode, YAML tags)", "one line naming the item, exit 2, never a traceback",
     ["test_safety.py::test_malformed_set_values_name_the_item",
      "test_safety.py::test_random_set_values_are_each_one_clear_line"]),
    ("Config and CLI", "`--limit-train` larger than the training split", "one note line; trains on the whole split",
     ["test_safety.py::test_limit_train_beyond_the_split_says_so"]),
    ("Files", "Results shared on a cluster", "every file fkt writes gets the mode the umask gives (0644 under 022)",
     ["test_safety.py::test_written_files_follow_the_umask",
      "test_safety.py::test_a_run_directory_is_readable_by_colleagues"]),
    ("Few labels", "More labels per class than a class has, a labelled fraction outside (0, 1] or beside "
     "labels per class",
     "one line naming the flag and the numbers, exit 2, nothing written",
     ["test_few_labels.py::test_bad_label_budgets_are_one_line_and_write_nothing"]),
    ("Few labels", "`--unlabelled-root` missing or without images", "one line naming the folder, exit 2, nothing written",
     ["test_few_labels.py::test_an_unlabelled_folder_without_images_is_refused"]),
    ("Few labels", "Unreadable images in `--unlabelled-root`", "listed with the rest of the scan and stopped, or "
     "left out with `--skip-bad-images`", ["test_few_labels.py::test_unlabelled_root_images_join_the_pool_and_bad_ones_are_screened"]),
    ("Few labels", "SIGKILL mid-epoch of a functional run with two streams (pool and cycling labelled batch)",
     "the rerun ends with the weights and metrics of an uninterrupted run",
     ["test_faults.py::test_a_few_label_run_with_two_streams_resumes_exactly_after_sigkill"]),
    ("Image cache", "Two runs (grid cells, DDP ranks) needing the same image cache at once",
     "one builds it under an flock, the other waits and opens it; both read identical pixels",
     ["test_cache.py::test_two_processes_build_once_and_get_the_same_pixels"]),
    ("Image cache", "A damaged cache: truncated or missing data file, edited or garbled index; a killed "
     "build's temporary file", "rebuilt with a one-line note; leftovers removed",
     ["test_cache.py::test_a_damaged_cache_is_rebuilt_with_a_note"]),
    ("Image cache", "Disk full while building the cache", "one line naming the folder and the space needed, "
     "exit 2; no file left but the lock", ["test_cache.py::test_a_full_disk_is_one_line_and_leaves_no_file"]),
    ("Image cache", "An image file changed, added or removed after the cache was built",
     "a new cache (the key holds every file's size and mtime); the new pixels are used",
     ["test_cache.py::test_a_changed_or_removed_file_makes_a_new_cache"]),
]


def node_ids() -> list[str]:
    """Pytest node ids: a bare test name selects all of its parameters."""
    return sorted({f"tests/{test.split('[')[0]}" for _, _, _, tests in ROWS for test in tests})


def outcomes(junit: Path) -> dict[str, bool]:
    """'file::name[param]' -> passed, from pytest's JUnit XML."""
    results = {}
    for case in ET.parse(junit).iter("testcase"):
        module = case.get("classname", "").split(".")[-1]
        failed = any(child.tag in ("failure", "error", "skipped") for child in case)
        results[f"{module}.py::{case.get('name')}"] = not failed
    return results


def handled(test: str, results: dict[str, bool]) -> bool:
    matching = [ok for name, ok in results.items() if name == test or name.startswith(test + "[")]
    return bool(matching) and all(matching)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "faults.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                        *node_ids()], cwd=ROOT, check=False)
        results = outcomes(junit)
    lines, group, ok_rows = [], None, 0
    for row_group, fault, action, tests in ROWS:
        if row_group != group:
            group = row_group
            lines += ["", f"### {group}", "", "| Fault or input | What fkt does | Test | Handled |", "|---|---|---|---|"]
        ok = all(handled(t, results) for t in tests)
        ok_rows += ok
        names = "<br>".join(f"`{t}`" for t in tests)
        lines.append(f"| {fault} | {action} | {names} | {'yes' if ok else '**no**'} |")
    today = datetime.date.today().isoformat()
    header = [
        "# Faults and bad input: what was tried, what fkt does",
        "",
        f"**{ok_rows} of {len(ROWS)} tried, {ok_rows} handled**, by the tests named in each row "
        f"(generated {today} by `.venv/bin/python scripts/fault_table.py`, which runs them and writes this file).",
        "",
        "What is bit-identical after a resume, and why: on CPU with a fixed seed, a run killed at any moment "
        "and rerun ends with the same metrics.json (apart from wall-clock seconds and the `resumed` flags) "
        "and the same weights, bit for bit. The checkpoint holds the model, optimizer, scheduler, Lightning's "
        "loop counters, the data loader's epoch and position (the order is a pure function of seed and "
        "epoch, `fkt.data.sampler`) and the RNG states; each step's augmentations are drawn from the step's own "
        "generator, seeded from (seed, method, step, rank) (`fkt.step`), so they do not depend on anything "
        "else drawn before them. Not "
        "identical: `train_seconds`; log rows for steps trained after the last checkpoint and before the "
        "kill appear twice in `logs/*/metrics.csv`. On GPUs, cuDNN's non-deterministic kernels make two "
        "uninterrupted runs differ already unless `trainer.deterministic: true`.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(header + lines) + "\n")
    print(f"{ok_rows}/{len(ROWS)} handled; wrote {args.out}")
    return 0 if ok_rows == len(ROWS) else 1


if __name__ == "__main__":
    sys.exit(main())
