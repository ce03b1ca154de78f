"""
Loss curves of train.py runs, one line per run, from their out_dir/log.jsonl, into a PNG.

    python plot.py out-shakespeare-char
    python plot.py /tmp/sw-gpt2 /tmp/sw-rope --out=switches.png --title="Tiny Shakespeare, 2000 steps"

Left: val loss (solid) and train loss (dashed) of each eval against iterations; right: the same against
tokens seen (iterations times the tokens of one step, from the run's ckpt.pt config, else from its log).
A second row shows HellaSwag's acc_norm where a run logged it (hellaswag=True). A later record of the same
iteration (a resumed run, an eval_only) replaces the earlier one. Needs matplotlib (pip install matplotlib).
"""

import json
import os

from configurator import ConfigError, UserError, exit_with_error, load_config

DEFAULTS = dict(
    out="loss.png",  # the PNG written
    title="",        # above the plots
    ymax=0.0,        # the loss axis's top; 0.0 is automatic
)


def read_run(out_dir):
    """{'name', 'evals': [(iter, train_loss, val_loss, hellaswag or None)], 'tokens_per_step' or None}."""
    path = os.path.join(out_dir, "log.jsonl")
    try:
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    starts = [i for i, r in enumerate(records) if r.get("event") == "start" and r.get("init_from") != "resume"]
    records = records[starts[-1] if starts else 0:]  # log.jsonl is appended to: the last run and its resumes
    evals = {r["iter"]: (r["iter"], r["train_loss"], r["val_loss"], r.get("hellaswag"))
             for r in records if "val_loss" in r}
    if not evals:
        raise ConfigError(f"{path} holds no eval (no val_loss): train for at least one eval_interval")
    return {"name": os.path.basename(os.path.normpath(out_dir)), "evals": [evals[i] for i in sorted(evals)],
            "tokens_per_step": tokens_per_step(out_dir, records)}


def tokens_per_step(out_dir, records):
    """batch_size * block_size * gradient_accumulation_steps of the run's saved config, else tokens/s times the
    step time of a logged step, else None."""
    ckpt = os.path.join(out_dir, "ckpt.pt")
    if os.path.isfile(ckpt):
        from checkpoint import load_checkpoint
        try:
            c = load_checkpoint(ckpt, mmap=True).get("config") or {}
            return c["batch_size"] * c["block_size"] * c["gradient_accumulation_steps"]
        except (UserError, KeyError, TypeError):  # an unreadable or foreign checkpoint: fall back on the log
            pass
    step = next((r for r in records if r.get("tokens_per_sec") and r.get("ms")), None)
    return round(step["tokens_per_sec"] * step["ms"] / 1000) if step else None


def plot(runs, out, title="", ymax=0.0):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    hellaswag = any(e[3] is not None for run in runs for e in run["evals"])
    fig, axes = plt.subplots(2 if hellaswag else 1, 2, figsize=(11, 7.5 if hellaswag else 4.2), squeeze=False)
    for n, run in enumerate(runs):
        color = f"C{n % 10}"
        iters = [e[0] for e in run["evals"]]
        for col, scale in enumerate((1, run["tokens_per_step"])):
            if scale is None:
                continue
            x = [i * scale for i in iters]
            axes[0][col].plot(x, [e[2] for e in run["evals"]], color=color, label=f"{run['name']} val")
            axes[0][col].plot(x, [e[1] for e in run["evals"]], color=color, linestyle="--", alpha=0.5)
            if hellaswag:
                points = [(xi, e[3]) for xi, e in zip(x, run["evals"]) if e[3] is not None]
                if points:
                    axes[1][col].plot(*zip(*points), color=color, marker=".", label=run["name"])
    for col, xlabel in enumerate(("iterations", "tokens")):
        for row in range(len(axes)):
            axes[row][col].set_xlabel(xlabel)
            axes[row][col].grid(alpha=0.3)
        axes[0][col].set_ylabel("loss (val solid, train dashed)")
        if ymax:
            axes[0][col].set_ylim(top=ymax)
        if hellaswag:
            axes[1][col].set_ylabel("HellaSwag acc_norm")
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main(argv=None):
    import sys
    argv = sys.argv[1:] if argv is None else argv
    try:
        config = load_config(DEFAULTS, [a for a in argv if a.startswith("-")])
        out_dirs = [a for a in argv if not a.startswith("-")]
        if not out_dirs:
            raise ConfigError("name at least one out_dir: python plot.py OUT_DIR [OUT_DIR ...] [--out=loss.png]")
        runs = [read_run(d) for d in out_dirs]
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("plot.py needs matplotlib, which is optional: pip install matplotlib") from None
        plot(runs, config["out"], config["title"], config["ymax"])
    except ConfigError as e:
        exit_with_error(e)
    except OSError as e:
        exit_with_error(f"cannot write {config['out']}: {e.strerror or e}")
    print(f"wrote {config['out']}: {len(runs)} run{'s' * (len(runs) > 1)}")


if __name__ == "__main__":
    main()
