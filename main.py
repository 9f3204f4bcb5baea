r"""dapt-jax: fine-tune, evaluate and run DAPT on point clouds.

  python main.py --config=configs/scanobjectnn.py:hardest --workdir=runs/hardest \
      --config.init_from=ckpts/pointmae
  python main.py --config=configs/scanobjectnn.py:hardest --workdir=runs/hardest --mode=eval
  python main.py --config=configs/scanobjectnn.py:hardest --workdir=runs/hardest \
      --mode=predict --input=cloud.ply

Any config field can be overridden: --config.optim.lr=1e-3, --config.data.data_dir=PATH.

Exit status: 0 done; 2 a user mistake (one `error:` line on stderr, nothing written; the
traceback too with --debug or DAPT_JAX_DEBUG=1); 3 preempted (SIGTERM: the run saved its state;
re-run the same command to resume) or, in a multi-host run, a lost peer process (one `error:`
line naming it and the step that re-running the command on every host resumes from).
"""
import logging
import os

from absl import app
from absl import flags
from ml_collections import config_flags

from dapt_jax import cli
from dapt_jax import errors

config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/scanobjectnn.py:hardest.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and evaluation output.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'predict', 'summary', 'tsne'],
                  'train (resumes if the workdir has a run), eval, predict, tsne (2-D t-SNE of '
                  'the head input over eval.split, PNG + .npy in the workdir), or summary (the '
                  'parameter table: what trains, per module and partition rule; no data).')
flags.DEFINE_string('input', None, '--mode=predict: a cloud or mesh file, a folder or a glob '
                    '(.npy .txt .xyz .ply .pcd .h5 .off .obj .stl); writes '
                    '<workdir>/predictions.csv.')
flags.DEFINE_string('category', None, '--mode=predict with a part-segmentation config: the '
                    'object category of the input cloud(s), e.g. --category=Chair.')
flags.DEFINE_bool('distributed', None, 'Call jax.distributed.initialize() (multi-host). Default: '
                  'when a cluster environment (SLURM, TPU pod, JAX_COORDINATOR_ADDRESS) is seen.')
flags.DEFINE_bool('debug', False, 'Print the traceback of a user error too (as DAPT_JAX_DEBUG=1).')

FLAGS = flags.FLAGS


def _fail(message: str) -> None:
  errors.fail(message)


def _multi_host() -> bool:
  if FLAGS.distributed is not None:
    return FLAGS.distributed
  env = os.environ
  return bool(env.get('JAX_COORDINATOR_ADDRESS') or env.get('SLURM_NTASKS', '1') not in ('', '1')
              or env.get('TPU_WORKER_HOSTNAMES') or env.get('MEGASCALE_COORDINATOR_ADDRESS'))


def _ended_normally() -> None:
  """Multi-host: tells the other processes that this one ends normally, so that one still
  finishing its own work does not take this one's silence for a lost process."""
  if _multi_host():
    from dapt_jax import multihost  # pylint: disable=g-import-not-at-top
    multihost.mark_ended()


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected argument {argv[1]!r} (flags are --name=value; see --helpshort)')
  if FLAGS.debug:
    os.environ[errors.DEBUG_ENV] = '1'
  if FLAGS.config is None:
    _fail('--config is required, e.g. --config=configs/synthetic.py')
  if FLAGS.workdir is None and FLAGS.mode not in ('predict', 'summary'):
    _fail('--workdir is required')
  if FLAGS.mode == 'predict' and not FLAGS.input:
    _fail('--mode=predict needs --input=FILE')
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s',
                      force=True)
  logging.getLogger('absl').setLevel(logging.WARNING)
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)  # 'Unable to load libtpu'
  resume_dir = FLAGS.workdir if FLAGS.mode == 'train' else None
  if _multi_host():
    from dapt_jax import multihost  # pylint: disable=g-import-not-at-top
    multihost.supervise(resume_dir)  # a lost process 0 aborts JAX's client: watch from outside
  import jax  # pylint: disable=g-import-not-at-top
  if _multi_host():
    multihost.initialize(resume_dir)

  from dapt_jax import compile_cache  # pylint: disable=g-import-not-at-top
  from dapt_jax import validate  # pylint: disable=g-import-not-at-top
  from dapt_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  try:
    # Everything that can be checked is checked before the workdir is touched or a model built.
    if FLAGS.mode in ('train', 'eval'):
      from dapt_jax.data import classes  # pylint: disable=g-import-not-at-top
      if classes.counted_by_preparing(config):  # checked first: preparing can take minutes
        validate.check_run(config, FLAGS.workdir, FLAGS.mode)
      config = classes.fit_to_data(config)  # folder data: prepared, model.num_classes set
    validate.check_run(config, FLAGS.workdir, FLAGS.mode)
    compile_cache.enable(config.get('compile_cache_dir', compile_cache.DEFAULT_DIR))
    from dapt_jax import train  # pylint: disable=g-import-not-at-top
    if FLAGS.mode == 'train':
      with workdir_lib.lock(FLAGS.workdir, enabled=jax.process_index() == 0):
        summary = train.train_and_evaluate(config, FLAGS.workdir)
      best = summary['best_value']
      best_text = (f"best {summary['best_metric']} {best:.4f} at epoch {summary['best_epoch']}"
                   if best is not None else '')
      if summary['stopped'] != 'finished':
        print(f"stopped after step {summary['steps']} ({summary['stopped']}); "
              + ('raise or drop --config.max_steps to go on' if summary['stopped'] == 'max_steps'
                 else 're-run the same command to resume'))
      elif summary['trainable_parameters'] is None:  # nothing to do: the run had ended before
        print(f"the run in {FLAGS.workdir} is already complete ({summary['steps']} steps)"
              + (f'; {best_text}' if best_text else ''))
      else:
        final = summary['final_description'] or f"{summary['steps']} steps"
        print(f'final: {final}'
              + (f'; {best_text}' if best_text else '')
              + f"; {summary['trainable_parameters']:,} of {summary['total_parameters']:,} "
              'parameters trained')
      if summary['stopped'] == 'preempted':
        _ended_normally()
        return errors.EXIT_PREEMPTED  # a scheduler requeues on this status
      from dapt_jax import figures  # pylint: disable=g-import-not-at-top
      figure = figures.after_training(config, FLAGS.workdir, summary)  # the task's own, if any
      if figure:
        print(figure)
    elif FLAGS.mode == 'summary':
      from dapt_jax import summary as summary_lib  # pylint: disable=g-import-not-at-top
      print(summary_lib.summarize(config))
    elif FLAGS.mode == 'tsne':
      from dapt_jax import tsne  # pylint: disable=g-import-not-at-top
      r = tsne.run(config, FLAGS.workdir)
      print(f"t-SNE of {r['num_samples']} {r['split']} clouds ({r['feature_dim']}-D head input) "
            f"of {r['checkpoint']}; wrote {r['png']} and {r['npy']}")
    elif FLAGS.mode == 'eval':
      m = train.evaluate_workdir(config, FLAGS.workdir)
      print(f"{m['split']}: {m['description']} over {m['num_samples']} samples "
            f"(votes={m['votes']}) of {m['checkpoint']}; wrote "
            f"{FLAGS.workdir}/eval_{m['split']}.json")
    else:  # predict: the task says what it makes of the input files
      from dapt_jax import predict  # pylint: disable=g-import-not-at-top
      print(predict.run(config, FLAGS.workdir, FLAGS.input, FLAGS.category))
    _ended_normally()
  except Exception as e:  # pylint: disable=broad-except
    from dapt_jax import multihost  # pylint: disable=g-import-not-at-top
    multihost.hold_if_peer_lost(e)  # a peer process lost: one line and status 3, from here
    if not isinstance(e, errors.UserError):
      raise
    errors.report(e)
    errors.exit_now(errors.EXIT_USER_ERROR)  # no background save/restore left to wait for


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)  # flag mistakes: one `error:` line, status 2
