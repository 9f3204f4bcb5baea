"""Where ScanObjectNN's official h5 files live under `data_dir`, and where they come from."""
from __future__ import annotations

import os

from dapt_jax.data import readers

# Label order of the official release (label = index).
CLASS_NAMES = ('bag', 'bin', 'box', 'cabinet', 'chair', 'desk', 'display', 'door', 'shelf',
               'table', 'bed', 'pillow', 'sink', 'sofa', 'toilet')

# config → (folder, file suffix); SPEC §4.
VARIANTS = {
    'objbg': ('main_split', ''),
    'objonly': ('main_split_nobg', ''),
    'hardest': ('main_split', '_augmentedrot_scale75'),
}

INSTRUCTIONS = (
    'ScanObjectNN is distributed by its authors after agreeing to their terms of use '
    '(https://hkust-vgd.github.io/scanobjectnn/); download h5_files.zip and point data.data_dir at '
    'the folder that holds main_split/ and main_split_nobg/ (default data/ScanObjectNN), e.g. '
    'data/ScanObjectNN/main_split/training_objectdataset.h5.')


def split_files(data_dir: str, variant: str) -> dict[str, str]:
  """{'train': path, 'test': path} for a variant; DataError listing any that are missing."""
  folder, suffix = VARIANTS[variant]
  files = {split: os.path.join(data_dir, folder, f'{prefix}_objectdataset{suffix}.h5')
           for split, prefix in (('train', 'training'), ('test', 'test'))}
  readers.require_files(list(files.values()), f'ScanObjectNN ({variant})', INSTRUCTIONS,
                        hint=f'data.data_dir={data_dir!r}')
  return files
