"""What every command's parser shares: `--debug`, `--verbose`, and JSON-object flag values."""

from __future__ import annotations

import argparse
import json


def json_object(text: str) -> dict:
    """An argparse `type`: a JSON object; the error names the JSON problem (argparse names the flag)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(
            f"not valid JSON ({e}) in {text!r}; expected an object such as '{{\"num_hidden_layers\": 4}}'"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object ({{...}}), got {text!r}")
    return value


def add_common_flags(p: argparse.ArgumentParser) -> None:
    """`--debug` and `--verbose`, on every command."""
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also print the libraries' INFO and WARNING logs (TensorFlow, LiteRT, ONNX, ...)",
    )
