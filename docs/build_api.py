"""Build factrace's API reference from its docstrings with pdoc, offline (``make docs``).

    python docs/build_api.py --out docs/api

The reference covers the package's public names (what ``import factrace`` exports) and every
module of the package, each page with its docstrings (Google style: Args, Returns, Raises).
The pages load nothing from the network; open ``docs/api/index.html`` in a browser. The design
the docstrings cite (docs/design.md § "…") is beside this file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
from pathlib import Path


def modules() -> list[str]:
    """The modules to document: ``factrace``, and each module that pdoc would not reach from
    its package (pdoc follows only the submodules a package's ``__all__`` names, when it has
    one); private ones (``__main__``) left out."""
    import factrace

    names = ["factrace"]
    for info in pkgutil.walk_packages(factrace.__path__, "factrace."):
        parent_name, _, leaf = info.name.rpartition(".")
        parent = importlib.import_module(parent_name)
        listed = vars(parent).get("__all__")
        if listed is not None and leaf not in listed and not leaf.startswith("_"):
            names.append(info.name)
    return names


def resolve_exports(names: list[str]) -> None:
    """Import the names each package exports lazily, so pdoc finds them in its namespace."""
    for name in names:
        module = importlib.import_module(name)
        for public in vars(module).get("__all__", ()):
            getattr(module, public)


def build(out: Path) -> list[str]:
    """Write the reference under ``out``; returns the modules documented."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import pdoc
    import pdoc.render

    names = modules()
    resolve_exports(names)
    pdoc.render.configure(docformat="google", footer_text="factrace", math=False, mermaid=False)
    pdoc.pdoc(*names, output_directory=out)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "api")
    args = parser.parse_args()
    names = build(args.out)
    print(f"API reference of {len(names)} modules and their submodules: {args.out / 'index.html'}")


if __name__ == "__main__":
    main()
