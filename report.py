"""What runs and benchmarks write for people to read: tables (Markdown and CSV) and figures."""

import csv
from pathlib import Path


def write_table(folder, name, rows, columns, title):
    """Print rows (dicts) as a Markdown table under title, and save it as name.md and name.csv in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}"]
    lines += [f"| {' | '.join(str(r.get(c, '')) for c in columns)} |" for r in rows]
    table = "\n".join(lines)
    (folder / f"{name}.md").write_text(f"{title}\n\n{table}\n")
    with open(folder / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    print(f"\n{title}\n\n{table}\n\n(written to {folder}/{name}.md, .csv)")


def new_figure(**kwargs):
    """A matplotlib Figure to save to a file. Made without pyplot, so the caller's backend (a notebook's inline
    plots, say) is left as it was, and the figure needs no closing."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def plot_losses(out_dir, records):
    """loss.png in out_dir: the training loss at each logged step and the validation loss at each evaluation."""
    steps = [r for r in records if r["kind"] == "step"]
    evals = [r for r in records if "val_loss" in r]
    fig = new_figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="train (batch)", alpha=0.7)
    ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=Path(out_dir).name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(out_dir, "loss.png"), dpi=100)
