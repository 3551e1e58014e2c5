"""Draw a product's W3C PROV graph (from `ccat-wm lineage PRODUCT --prov`) as a PNG.

    ccat-wm lineage MAP.cube.fits --prov > map.prov.json
    python examples/prov_graph.py map.prov.json docs/images/demo-map-prov.png

Uses the `prov` package's graphviz support (`prov.dot`), which needs `pydot` and
graphviz's `dot` program (`pip install pydot`, `apt-get install graphviz`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from prov.dot import prov_to_dot
from prov.model import ProvDocument


def main() -> None:
    """Read PROV-JSON from argv[1] and write the graph as PNG to argv[2]."""
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    doc = ProvDocument.deserialize(content=source.read_text(), format="json")
    prov_to_dot(doc, show_element_attributes=False, direction="BT").write_png(str(target))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
