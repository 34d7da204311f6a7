"""The `kaizen` command's entry point, and the only name this project installs into site-packages.

The project's folders (agent, feedback, adapters, lab, ui, web, cli) are generic names: `adapters` is also
AdapterHub's import name. They are not installed, so no other library can be shadowed by them, or shadow them:
they are imported from the checkout, which this launcher puts first on sys.path (an editable install, `make
install`, points here at the checkout). `python app.py` and `python -m cli.main` from the checkout need nothing.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main() -> int:
    if not (ROOT / "agent" / "settings.py").is_file():
        sys.exit(f"kaizen: the Kaizen Chat checkout is not beside {__file__}; install it editable from the checkout "
                 "(`make install`, i.e. pip install -e .)")
    sys.path.insert(0, str(ROOT))
    from cli.main import main as run

    return run()


if __name__ == "__main__":
    sys.exit(main())
