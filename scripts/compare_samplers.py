"""Compare evaluate.py runs that differ only in the sampler: quality against steps, paired with a reference run.

Each RUN is an evaluate.py output directory (results.json and records.json). Every run is compared with the
reference (default: the first RUN, e.g. the released DDIM 50) per sample: paired differences of mask, text
and joint accuracy with 95% confidence intervals, and the Fréchet distance ratio; a run *matches* when no
accuracy is significantly lower and its FD is at most 1.1x the reference's (ldm/evaluation/sampler_comparison.py).
Prints the table and the commands that made the runs; --write-doc puts both into the marked block of a page.

Examples:
  # the runs of docs/samplers.md, then the table
  for s in ddim:50 ddim:25 ddim:10 dpmpp_2m:25 dpmpp_2m:15 dpmpp_2m:10 unipc:15 unipc:10; do
    python scripts/evaluate.py --config checkpoints/faceworld/codiff.yaml --ckpt checkpoints/faceworld/codiff.safetensors \\
        --data data/faceworld --methods collaborative --num 500 --sampler ${s%:*} --steps ${s#*:} --out outputs/samplers/${s/:/_}
  done
  python scripts/compare_samplers.py outputs/samplers/ddim_50 outputs/samplers/ddim_25 outputs/samplers/ddim_10 \\
      outputs/samplers/dpmpp_2m_25 outputs/samplers/dpmpp_2m_15 outputs/samplers/dpmpp_2m_10 \\
      outputs/samplers/unipc_15 outputs/samplers/unipc_10 --write-doc docs/samplers.md
"""

from __future__ import annotations

import shlex
import sys

from ldm.cli import main_guard, make_parser
from ldm.evaluation.sampler_comparison import compare, load_run, markdown, write_block


@main_guard
def main(argv=None):
    p = make_parser(__doc__)
    p.add_argument("runs", nargs="+", help="evaluate.py output directories, in table order")
    p.add_argument("--reference", default=None, help="the run the others are paired with (default: the first)")
    p.add_argument("--method", default="collaborative", help="which method's results to compare")
    p.add_argument("--write-doc", default=None, metavar="PATH",
                   help="replace the <!-- sampler-comparison:begin/end --> block of PATH (e.g. docs/samplers.md)")
    args = p.parse_args(argv)
    runs = [load_run(r) for r in args.runs]
    reference = load_run(args.reference) if args.reference else runs[0]
    if reference.path.resolve() not in {r.path.resolve() for r in runs}:
        runs.insert(0, reference)
    reference = next(r for r in runs if r.path.resolve() == reference.path.resolve())
    table = markdown(compare(runs, reference, args.method), reference, args.method)
    argv_text = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    commands = "\n".join([*(r.command() for r in runs), f"python scripts/compare_samplers.py {argv_text}"])
    print(table)
    print(commands)
    if args.write_doc:
        write_block(args.write_doc, f"{table}\nMade by:\n\n```\n{commands}\n```\n")
        print(f"wrote the table into {args.write_doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
