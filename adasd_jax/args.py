"""Command-line arguments shared by `adasd`'s subcommands, the benchmark and distillation: the model, quantization,
mesh and output flags and what they mean for `load_pair`. Imports nothing heavy until a flag is read."""
from __future__ import annotations


def _add_model_args(p):
    p.add_argument("--draft", help="draft model (default: the built-in pair's 0.5B)")
    p.add_argument("--target", help="target model (default: the built-in pair's 1.5B)")
    p.add_argument("--dtype", default="bfloat16", help="float32 | bfloat16 | float16 (default bfloat16)")
    add_draft_layers_arg(p)
    add_quantize_args(p)


QUANTIZE_HELP = ("int8: matrices (projections, embedding, head) stored as int8 with per-output-channel scales, half "
                 "the bytes of bf16 per decode step; --dtype stays that of the activations. none: floating point")


def add_quantize_args(p, draft: bool = True):
    p.add_argument("--quantize", default="none", choices=("none", "int8"), help=f"the target's weights: {QUANTIZE_HELP}"
                   + " (default none)")
    if draft:
        p.add_argument("--draft-quantize", default=None, choices=("none", "int8"),
                       help="the draft's weights (default: as --quantize); e.g. --draft-quantize int8 alone: an int8 "
                            "draft with a bf16 target")


def quantize_kwargs(a) -> dict:
    return {"quantize": a.quantize, "draft_quantize": a.draft_quantize}


def add_draft_layers_arg(p):
    p.add_argument("--draft-layers", type=int, default=None, metavar="N",
                   help="keep only the draft's first N layers (with its final norm and head): a weaker, cheaper draft")


def add_overwrite_arg(p, what: str):
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace an existing {what} (a file, or a directory with files in it), in one step once the "
                        "new one is complete; without it, such a destination is refused")


def add_mesh_arg(p):
    p.add_argument("--mesh", nargs="?", const="", default=None, metavar="data=N,model=M",
                   help="shard over a device mesh (batch on data, heads/FFN/vocabulary on model); a bare --mesh, "
                        "and the default where there are several devices: every device on model (tensor "
                        "parallelism, what speeds up decoding a few prompts); --mesh none: one device")
    p.add_argument("--shard-draft", action="store_true", help="shard the draft like the target (default: replicated)")
    p.add_argument("--rule", action="append", metavar="LOGICAL=MESH[+MESH]",
                   help="remap one logical axis of the sharding table (repeatable), e.g. ffn=model+data to shard the "
                        "MLP over both mesh axes, or vocab=none to replicate; 2d: the MLP, vocabulary and query heads "
                        "on both axes (weights stay put, rows move: cheaper when decoding on data > 1)")


def mesh_kwargs(a) -> dict:
    """`load_pair`'s placement arguments from add_mesh_arg's flags. No --mesh: every device (of every process),
    when there are several; one device needs no mesh."""
    import jax

    from adasd_jax import sharding

    mesh = None if a.mesh == "none" else a.mesh
    if a.mesh is None and jax.device_count() > 1:
        mesh = ""
    if a.rule and mesh is None:
        raise ValueError("--rule changes how a mesh is sharded, and this run has one device: add --mesh (for example "
                         "--mesh data=2,model=4)")
    return {"mesh": mesh, "replicate_draft": not a.shard_draft, "rules": sharding.parse_rules(a.rule)}
