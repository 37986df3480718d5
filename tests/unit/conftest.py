"""Unit tests import the collection as ansible_collections.anycast.edge."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                'build', 'collections'))
