"""python -m convert: PyTorch checkpoints ⇄ dapt-jax (see --help)."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Sequence


DESCRIPTION = """\
Convert PyTorch checkpoints to dapt-jax and back.

  python -m convert SRC.pth DST [--config configs/scanobjectnn.py:hardest]
  python -m convert --to-torch SRC_DIR DST.pth [--config ...]

PyTorch → Flax. SRC.pth is read without running any code from it (a restricted reader that
accepts tensors and plain containers only; a file whose pickle asks for anything else is
refused). Its layout is recognised by itself:
  Point-MAE pre-training   keys MAE_encoder.*   (decoder, mask token ignored)
  ReCon pre-training       keys MAE_encoder.*   (also its image/text tokens, their attention
                                                 branch and the CLIP teachers ignored)
  ACT pre-training         keys ACT_encoder.*   (decoder, teacher, pre-training heads ignored)
  Point-BERT pre-training  keys transformer_k.* (transformer_q, dVAE, queue ignored)
  others                   keys base_model.*    (looked at again inside)
  DAPT fine-tuned          the release's keys   (all must be present)
  IDPT / PointGST / VPT-deep fine-tuned  their releases' keys (blocks.cls.* / *.gft_adapter.* /
                           cls_prompt_list.*; all must be present): model.peft idpt / pointgst /
                           vpt_deep (IDPT's second name of each prompt BatchNorm is checked)
with or without a `module.` prefix, the state dict under base_model, model, state_dict or bare.
Every tensor must land on a variable of the model (transposed as needed) or be on the layout's
ignore list, and shapes must match; otherwise nothing is written. Variables the file does not
provide (adapters, scale-shifts, head, class token when converting a pre-trained backbone) are
reported as freshly initialised: training initialises them.
DST becomes a directory: an orbax checkpoint of {'params', 'batch_stats'} holding only the
converted tensors, plus DST/report.json. Train from it with
  python main.py --config=configs/scanobjectnn.py:hardest --config.init_from=DST ...
Without --config the model's shapes are read off the checkpoint (width, depth, rank, classes,
head input) and the rest comes from configs/scanobjectnn.py:hardest.

Flax → PyTorch (--to-torch). SRC_DIR is a converted checkpoint of a complete DAPT (or IDPT,
PointGST, VPT-deep, Point-MAE classifier: model.peft) model, or a
training workdir (its last checkpoint is exported); the model is the one its report.json (or
config.json) records unless --config says otherwise. DST.pth holds
{'base_model': state_dict} in the release's key layout, which the PyTorch release loads.
A pre-training workdir (configs/pretrain_shapenet.py) or a converted autoencoder exports in
Point-MAE's pre-training layout instead: all 209 entries (MAE_encoder.*, MAE_decoder.*,
decoder_pos_embed.*, increase_dim.*, mask_token, BatchNorm buffers), which Point-MAE loads
strictly and every fine-tuning code base reads as a backbone.

Part segmentation. Point-MAE's fine-tuned segmentation checkpoints ({'model_state_dict': ...}
with label_conv.*, propagation_0.*, convs1-3, bns1-2) are recognised by themselves and convert to
configs/shapenetpart.py:pointmae (Point-MAE's own network) unless --config says otherwise. A
pre-training checkpoint converts to the segmentation network's backbone with
--config configs/shapenetpart.py[:variant]. --to-torch of a segmentation run or checkpoint writes
{'model_state_dict': ...} in Point-MAE's segmentation layout (with DAPT: plus DAPT's tensors under
the DAPT release's names).

Pre-training checkpoints. Without --config, a Point-MAE pre-training .pth converts to the DAPT
classifier's backbone (the decoder ignored). With a pre-training config
(--config configs/pretrain_shapenet.py[:variant]) it converts to the whole masked autoencoder,
strictly, to resume pre-training from it (--config.init_from) or to fine-tune on it (the
classifier sets the decoder side aside).

Errors are one line on stderr, exit status 2, and leave nothing at DST.
"""


class _Parser(argparse.ArgumentParser):

  def error(self, message):  # one line, not argparse's usage block
    raise _UsageError(message)


class _UsageError(Exception):
  pass


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog='python -m convert', description=DESCRIPTION,
              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('src', metavar='SRC', help='a .pth file (or, with --to-torch, a converted dir)')
  p.add_argument('dst', metavar='DST', help='the directory to create (or, with --to-torch, .pth)')
  p.add_argument('--config', metavar='FILE.py[:ARG]', default=None,
                 help='the model to convert for, e.g. configs/modelnet40.py or '
                 'configs/scanobjectnn.py:objonly (default: inferred from the checkpoint)')
  p.add_argument('--to-torch', action='store_true',
                 help='convert a Flax checkpoint directory to a PyTorch .pth instead')
  p.add_argument('--force', action='store_true', help='replace DST if it exists')
  p.add_argument('-v', '--verbose', action='store_true',
                 help='list every loaded, ignored and freshly initialised tensor')
  return p


def _check_destination(dst: str, force: bool) -> None:
  """Fails before the (slower) conversion when DST cannot be written."""
  from dapt_jax import pretrained  # pylint: disable=g-import-not-at-top
  if os.path.lexists(dst) and not force:
    raise pretrained.PretrainedError(f'{dst} already exists (pass --force to replace it)')
  parent = os.path.dirname(dst)
  if not os.path.isdir(parent):
    raise pretrained.PretrainedError(f'{parent}: no such directory (create it first)')
  try:  # permission bits do not stop root, and a read-only filesystem shows none: try it
    fd, probe = tempfile.mkstemp(prefix=f'.{os.path.basename(dst)}.write-test-', dir=parent)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise pretrained.PretrainedError(f'{dst}: cannot write in {parent} ({e.strerror or e}); '
                                     'choose a destination you may write to') from None


def _to_flax(args) -> None:
  from convert import from_torch  # pylint: disable=g-import-not-at-top
  from dapt_jax import pretrained  # pylint: disable=g-import-not-at-top
  dst = os.path.abspath(args.dst)
  _check_destination(dst, args.force)
  conv = from_torch.convert_checkpoint(args.src, args.config)
  pretrained.save_converted(dst, conv.variables, conv.report, force=args.force)
  print(from_torch.summary(conv, dst, args.verbose))


def _to_torch(args) -> None:
  from convert import families  # pylint: disable=g-import-not-at-top
  from convert import to_torch  # pylint: disable=g-import-not-at-top
  from dapt_jax import pretrained  # pylint: disable=g-import-not-at-top
  dst = os.path.abspath(args.dst)
  _check_destination(dst, args.force)
  to_torch.import_torch()  # fail early when torch is missing
  variables = pretrained.load_converted(args.src, workdir_checkpoint='last')
  family = families.for_variables(variables)
  fields = to_torch.fields_for(family, args.src, args.config)
  state_dict = to_torch.variables_to_torch_state_dict(variables, fields)
  to_torch.write_pth(state_dict, dst, args.force, family.container)
  print(f'wrote {dst}: {{"{family.container}": state dict of {len(state_dict)} tensors}} in the '
        f'{family.torch_layout(fields)} (from {os.path.abspath(args.src)})')
  if args.verbose:
    for key, value in state_dict.items():
      print(f'  {key} {tuple(value.shape)}')


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the CLI; returns the exit status (0 ok, 2 user error, 1 internal error)."""
  try:
    args = _parser().parse_args(argv)
  except _UsageError as e:
    print(f'error: {e} (see python -m convert --help)', file=sys.stderr)
    return 2
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's INFO chatter
  from dapt_jax import errors  # pylint: disable=g-import-not-at-top
  try:
    (_to_torch if args.to_torch else _to_flax)(args)
  except errors.UserError as e:  # ConvertError, PretrainedError, ...
    return errors.report(e)
  except KeyboardInterrupt:
    print('error: interrupted', file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except  (one line, never a traceback)
    detail = str(e).splitlines()[0] if str(e) else ''
    print(f'error: internal error, please report it: {type(e).__name__}: {detail}',
          file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  status = main()
  if status:
    # A failed write may leave the checkpoint library's background threads waiting on barriers
    # for minutes at interpreter exit; nothing is left to clean up, so end now.
    from dapt_jax import errors  # pylint: disable=g-import-not-at-top
    errors.exit_now(status)
  sys.exit(0)
