"""Entry point: `python3 .../anycast_proxy --config FILE` or `python3 -m anycast_proxy`."""
import os
import sys

if not __package__:
    # Run as a directory: sys.path[0] is the package itself, where module
    # names like `config` could shadow others. Import it as a package instead.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from anycast_proxy.cli import main
else:
    from .cli import main

sys.exit(main())
