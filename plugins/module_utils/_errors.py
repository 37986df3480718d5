# -*- coding: utf-8 -*-
# Copyright: anycast.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one error type of the collection's modules.

Every failure the user should read (bad input, a kernel's or a tool's refusal,
a lock held too long) is an :class:`EdgeError` whose text is already a
sentence naming the object and what was said. The engine turns it into
``fail_json`` in one place; nothing else catches it.
"""

from __future__ import annotations


class EdgeError(Exception):
    """A failure phrased for the user."""


class ParamError(EdgeError, ValueError):
    """Bad input; the message starts with the parameter's path (``rules[2].on_port``)."""

    def __init__(self, param, problem):
        self.param = param
        self.problem = problem
        super().__init__('%s: %s' % (param, problem))
