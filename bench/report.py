"""Targets, the markdown table and the plots from one benchmark run's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

W2_N = "4096"


def _target(name: str, value: float, op: str, bound: float, note: str) -> dict[str, Any]:
    ok = value >= bound if op == ">=" else value <= bound
    return {"name": name, "value": value, "target": f"{op} {bound:g}", "pass": bool(ok), "note": note}


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets as ratios measured in this run (only those whose inputs were measured)."""
    out = []
    w1 = r.get("w1", {})
    if "lossd" in w1 and "32" in w1["lossd"]:
        lossd = w1["lossd"]["32"]["rps"]
        if "naive" in w1:
            out.append(_target("W1 lossd/naive req/s at 32 clients", lossd / w1["naive"]["32"]["rps"], ">=", 4, ""))
        if "bare" in w1:
            out.append(
                _target("W1 lossd/bare-endpoint req/s at 32 clients", lossd / w1["bare"]["32"]["rps"], ">=", 0.5, "")
            )
    w2 = r.get("w2", {})
    if W2_N in w2.get("lossd_st", {}) and W2_N in w2.get("inprocess", {}) and W2_N in w2.get("wire_st", {}):
        limit = w2["inprocess"][W2_N]["median_s"] + w2["wire_st"][W2_N]["median_s"]
        out.append(
            _target("W2 safetensors lossd/(in-process+wire)", w2["lossd_st"][W2_N]["median_s"] / limit, "<=", 3, "")
        )
    if W2_N in w2.get("lossd_json", {}) and W2_N in w2.get("naive", {}):
        ratio = w2["naive"][W2_N]["median_s"] / w2["lossd_json"][W2_N]["median_s"]
        out.append(_target("W2 JSON naive/lossd latency", ratio, ">=", 5, ""))
    w3 = r.get("w3")
    if w3:
        out.append(
            _target("W3 lossd/(in-process+wire)", w3["lossd_st_s"] / (w3["inprocess_s"] + w3["wire_s"]), "<=", 2, "")
        )
    w4 = r.get("w4", {})
    if "lossd_batch_s" in w4:
        out.append(
            _target("W4 batch/separate calls per second", w4["lossd_separate_s"] / w4["lossd_batch_s"], ">=", 3, "")
        )
    return out


def _ms(s: float) -> str:
    return f"{s * 1e3:.3g}" if s < 1 else f"{s * 1e3:,.0f}"


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    c = r["config"]
    lines = [
        f"# lossd benchmark ({r['when']})",
        "",
        f"{m['platform']}, {m['cpu_count']} cores, Python {m['python']}, torch {m['torch']}"
        + (f", GPU {m['gpu']}" if "gpu" in m else "")
        + f"; device {c['device']}; server on cores {c['server_cpus']}, clients on cores {c['client_cpus']}"
        + (f"; {r['label']}" if r.get("label") else ""),
        "",
    ]
    if r.get("targets"):
        lines += ["## Targets", "", "| target | measured | wanted | |", "|---|---|---|---|"]
        for t in r["targets"]:
            lines.append(f"| {t['name']} | {t['value']:.2f} | {t['target']} | {'pass' if t['pass'] else '**miss**'} |")
        lines.append("")
    if "w1" in r:
        cs = c["concurrency"]
        lines += [
            "## W1: cross_entropy (32,10) with gradients over JSON (wrk, closed loop)",
            "",
            "req/s (p50 / p99 ms) at each number of connections.",
            "",
            "| service | " + " | ".join(f"{x} conn" for x in cs) + " |",
            "|---|" + "---|" * len(cs),
        ]
        for name, row in r["w1"].items():
            cells = [
                f"{row[str(x)]['rps']:,.0f} ({row[str(x)]['p50_ms']:.2f} / {row[str(x)]['p99_ms']:.2f})" for x in cs
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if "w2" in r:
        w2 = r["w2"]
        ns = sorted({int(n) for s in w2.values() for n in s})
        lines += [
            "## W2: cross_entropy (N,1000) with gradients, median latency (ms); N=4096 is W2",
            "",
            "| series | " + " | ".join(f"N={n}" for n in ns) + " |",
            "|---|" + "---|" * len(ns),
        ]
        for key, s in w2.items():
            lines.append(
                f"| {key} | " + " | ".join(_ms(s[str(n)]["median_s"]) if str(n) in s else "" for n in ns) + " |"
            )
        lines += [
            "",
            "Request bytes at N=4096: "
            + ", ".join(
                f"{k} {s[W2_N]['request_bytes'] / 1e6:.1f} MB"
                for k, s in w2.items()
                if W2_N in s and s[W2_N]["request_bytes"]
            ),
            "",
        ]
    if "w3" in r:
        w3 = r["w3"]
        lines += [
            "## W3: mse on 8,000,000 float32 with gradients over safetensors",
            "",
            "| | latency (ms) | MB/s (request + response) |",
            "|---|---|---|",
            f"| lossd | {_ms(w3['lossd_st_s'])} | {w3['lossd_mb_per_s']:,.0f} |",
            f"| in-process compute | {_ms(w3['inprocess_s'])} | |",
            f"| raw loopback TCP, same bytes | {_ms(w3['wire_s'])} | {w3['wire_mb_per_s']:,.0f} |",
            f"| limit (in-process + wire) | {_ms(w3['inprocess_s'] + w3['wire_s'])} | |",
            "",
            f"Request {w3['request_bytes'] / 1e6:.1f} MB, response {w3['response_bytes'] / 1e6:.1f} MB.",
            "",
        ]
    if "w4" in r:
        w4 = r["w4"]
        n = w4["calls"]
        lines += [
            f"## W4: {n} cross_entropy (32,10) calls with gradients",
            "",
            "| | total (ms) | calls/s |",
            "|---|---|---|",
        ]
        for key in ("lossd_batch_s", "lossd_separate_s", "naive_separate_s"):
            if key in w4:
                lines.append(f"| {key.removesuffix('_s').replace('_', ' ')} | {_ms(w4[key])} | {n / w4[key]:,.0f} |")
        lines.append("")
    return "\n".join(lines)


def plots(r: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    if "w2" in r:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for key, s in r["w2"].items():
            ns = sorted(int(n) for n in s)
            ax.plot([n * 1000 for n in ns], [s[str(n)]["median_s"] * 1e3 for n in ns], marker="o", label=key)
        ax.set(xscale="log", yscale="log", xlabel="input elements (N x 1000 logits)", ylabel="median latency (ms)")
        ax.set_title(f"cross_entropy with gradients: latency against payload size ({r['config']['device']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "latency_vs_size.png", dpi=110)
        plt.close(fig)
        made.append("latency_vs_size.png")
    if "w1" in r:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, row in r["w1"].items():
            cs = sorted(int(x) for x in row)
            ax.plot(cs, [row[str(x)]["rps"] for x in cs], marker="o", label=name)
        ax.set(xscale="log", xlabel="concurrent connections (wrk)", ylabel="requests/s")
        ax.set_title(f"cross_entropy (32,10) with gradients: throughput ({r['config']['device']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "throughput_vs_concurrency.png", dpi=110)
        plt.close(fig)
        made.append("throughput_vs_concurrency.png")
    return made


def write_report(r: dict[str, Any], out: Path) -> None:
    made = plots(r, out)
    text = markdown(r) + "".join(f"\n![{p}]({p})\n" for p in made)
    (out / "results.md").write_text(text)
