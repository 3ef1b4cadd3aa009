"""The quantization types the pipeline offers, by the names llama.cpp's quantize tool uses."""

from __future__ import annotations

from edgefleet.errors import MalformedInputError
from edgefleet.gguf import FILE_TYPES

# Types llama.cpp can produce without an importance matrix (the IQ types and Q2_K_S need one).
_NEEDS_IMATRIX = ("IQ", "TQ", "Q2_K_S")
VARIANTS: dict[str, int] = {
    name.lower(): code
    for code, name in FILE_TYPES.items()
    if not name.startswith(_NEEDS_IMATRIX) and name != "F32"
}
DEFAULT_VARIANTS = ("q4_0", "q5_1", "q8_0", "q4_k_m")
# The pipeline's gate (percent of perplexity above the source's) and perplexity window.
DEFAULT_MAX_PERPLEXITY_INCREASE = 25.0
DEFAULT_CONTEXT = 512
MAX_VARIANTS = 16


def parse_variants(text: str) -> tuple[str, ...]:
    """``"q4_0,q8_0"`` -> ``("q4_0", "q8_0")``; refuse unknown names and repeats."""
    names = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    if not names:
        raise MalformedInputError("--variants names no quantization type")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise MalformedInputError(
            f"unknown quantization type(s) {', '.join(unknown)}; "
            f"choose from {', '.join(sorted(VARIANTS))}"
        )
    if len(set(names)) != len(names):
        raise MalformedInputError("--variants names a type twice")
    if len(names) > MAX_VARIANTS:
        raise MalformedInputError(f"at most {MAX_VARIANTS} variants at once")
    return names


def variant_version(version: str, variant: str) -> str:
    """The registry version of one variant: ``1.0.0`` + ``q4_0`` -> ``1.0.0+q4_0``.

    Semantic-versioning build metadata: every variant of a release has the release's
    precedence, so moving a device between variants is never a downgrade.
    """
    if "+" in version:
        raise MalformedInputError(f"version {version!r} already has build metadata (+...)")
    return f"{version}+{variant}"


def split_variant_version(version: str) -> tuple[str, str | None]:
    """``1.0.0+q4_0`` -> ``("1.0.0", "q4_0")``; a plain version has no variant."""
    release, plus, variant = version.partition("+")
    return (release, variant) if plus and variant in VARIANTS else (version, None)
