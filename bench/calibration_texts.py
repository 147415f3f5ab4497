"""Write offline calibration text: the Python documentation topics that ship with CPython (pydoc_data).

    python bench/calibration_texts.py /tmp/caltexts
    helios calibrate --model smollm2-135m --texts /tmp/caltexts --tokens 20000 --out /tmp/smol-exits

The benchmark prompts (worker/helios_worker/assets/prompts) are not in it, so serving is
measured on text the calibration never saw.
"""

from __future__ import annotations

import pydoc_data.topics
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for number, (name, text) in enumerate(sorted(pydoc_data.topics.topics.items())):
        (out / f"{number:03d}-{name}.txt").write_text(text, encoding="utf-8")
    print(f"wrote {len(pydoc_data.topics.topics)} topics to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
