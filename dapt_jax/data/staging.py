"""Preparing a TFDS copy without ever losing a good one: build aside, then swap it in.

    staging.prepare(make, final_dir, tfds_dir, manual_dir, stamp_file, stamp)

`make(root)` constructs the builder with `data_dir=root`. The new copy is written under a hidden
staging root inside `tfds_dir` (the same filesystem, so the swap is a rename), its stamp file
written next to it, and only when all of that succeeded is it renamed onto `final_dir`. A
preparation that fails (a bad source file, a full disk, an interrupt) removes the staging root
and leaves whatever was at `final_dir` exactly as it was: several `data_dir`s, or an edited and a
good version of one, may share a prepared folder, and a failed rebuild of one must not cost the
others their copy.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Callable

STAGING_PREFIX = '.dapt-staging-'  # hidden folders in tfds_data_dir while a copy is prepared

log = logging.getLogger('dapt_jax')


def quiet_tfds() -> None:
  """TFDS's own "Generating splits... / Shuffling..." bars print to stderr whatever the run's
  progress_bar says; the project logs one line per preparation instead."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()


def _swap(staged: str, final: str) -> None:
  """Puts `staged` at `final` (a folder); the previous `final`, if any, is removed only after."""
  os.makedirs(os.path.dirname(final), exist_ok=True)
  old = None
  if os.path.lexists(final):
    old = tempfile.mkdtemp(prefix=STAGING_PREFIX + 'old-', dir=os.path.dirname(final))
    old = os.path.join(old, 'previous')
    os.rename(final, old)
  try:
    os.rename(staged, final)
  except OSError:
    if old is not None:  # put the previous copy back
      os.rename(old, final)
    raise
  if old is not None:
    shutil.rmtree(os.path.dirname(old), ignore_errors=True)


def prepare(make: Callable[[str], Any], final_dir: str, tfds_dir: str, manual_dir: Any,
            stamp_file: str, stamp: dict) -> None:
  """Prepares the dataset of `make` into a staging root, then swaps it onto `final_dir`.

  Args:
    make: root folder → a TFDS builder whose data_dir is under that root.
    final_dir: the builder's data_dir under `tfds_dir` (where readers will find the copy).
    tfds_dir: the TFDS data folder (the staging root is made inside it).
    manual_dir: the user's source folder (TFDS's manual_dir), or None.
    stamp_file: the name of the stamp file in the copy.
    stamp: written there as JSON (the fingerprint of the source files the copy was made from).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  quiet_tfds()
  os.makedirs(tfds_dir, exist_ok=True)
  root = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=tfds_dir)
  try:
    builder = make(root)
    log.info('%s: preparing a copy in %s (once; later runs reuse it)', builder.name, final_dir)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    builder.download_and_prepare(download_config=config)
    staged = os.fspath(builder.data_dir)
    with open(os.path.join(staged, stamp_file), 'w') as f:
      json.dump(stamp, f)
    _swap(staged, final_dir)
    log.info('%s: prepared (%s)', builder.name, ', '.join(
        f'{split} {info.num_examples}' for split, info in builder.info.splits.items()))
  finally:
    with contextlib.suppress(OSError):
      shutil.rmtree(root)
