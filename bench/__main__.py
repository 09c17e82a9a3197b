"""``python -m bench``: the command line (:mod:`bench.cli`).

``python -m`` puts the current folder first on ``sys.path``, so a user's own ``models/``
package or ``attacks.py`` there would shadow certbench's. The current folder is taken
off the path unless it is the checkout certbench itself runs from.
"""

import os
import sys

_checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [entry for entry in sys.path
               if os.path.abspath(entry or os.curdir) != os.getcwd() or os.getcwd() == _checkout]

from bench.cli import main  # noqa: E402  (after the path is fixed)

raise SystemExit(main())
