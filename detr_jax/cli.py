"""The `detr-jax` console script: train | eval | plan | convert | predict | export."""
import sys

USAGE = """usage: detr-jax COMMAND [options]
  train    --config=configs/X.py --workdir=DIR [--config.a.b=v ...]
  eval     --workdir=DIR [--config=configs/X.py --config.a.b=v ...]  (a run: its stored config)
  plan     --config=configs/X.py --topology=v5e:4x4 [--per_chip=N] [--json]
           (compile for a TPU slice without one: HBM, FLOPs, bytes, roofline)
  convert  SRC --out DIR [--dilation]   (official .pth or Hugging Face -> orbax)
  predict  --checkpoint=C IMAGES_OR_FOLDERS [--out=DIR] [--threshold=0.7]
  export   --checkpoint=C --out=DIR [--format=stablehlo|savedmodel]
"""


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ('-h', '--help'):
        print(USAGE)
        return 0
    cmd, rest = argv[1], argv[2:]
    if cmd in ('train', 'eval'):
        from absl import app
        from detr_jax import main as entry
        mode = 'train_and_eval' if cmd == 'train' else 'eval'
        sys.argv = [f'detr-jax {cmd}', f'--mode={mode}'] + rest
        app.run(entry.main)
        return 0
    if cmd == 'plan':
        from detr_jax import plan
        return plan.cli(rest)
    if cmd == 'convert':
        from detr_jax import convert
        return convert.cli(rest)
    if cmd == 'export':
        from detr_jax import export
        return export.cli(rest)
    if cmd == 'predict':
        from detr_jax import predict
        return predict.cli(rest)
    print(f'detr-jax: unknown command {cmd!r}\n{USAGE}', file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main())
