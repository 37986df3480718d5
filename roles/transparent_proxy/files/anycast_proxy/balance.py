"""Balancing: which origin of a tier takes the next connection.

A tier is the list of origins that may take traffic now (the pool's live
primaries, or its live backups when no primary is up); `members` is every
origin of the same kind, live or not. `rebuild()` runs when either changes
(health, DNS, reload), `pick()` once per connection, in O(1) or O(len(tier))
and without allocating. `exclude` (origins already tried by this connection)
is None except when failing over.

- RoundRobin: a precomputed, smoothly interleaved schedule in which every
  origin appears `weight` times (nginx's smooth weighted round-robin, run once
  per change instead of once per connection).
- LeastConnections: the fewest open connections per unit of weight; ties go
  round-robin, so an idle pool is still spread.
- SourceHash: consistent hashing on a ring of POINTS_PER_WEIGHT x weight
  points per origin. The ring holds every member, live or not, and a lookup
  walks clockwise to the first live one: while an origin is up its clients
  stay on it; when it goes down only its own share moves (spread over the
  others by the many points), and comes back with it. The hash is blake2b,
  stable across processes and restarts (Python's hash() of str is not).
"""
import bisect
import hashlib

POINTS_PER_WEIGHT = 100


def hash64(data):
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def smooth_schedule(origins):
    """Every origin `weight` times, interleaved as evenly as the weights allow."""
    total = sum(o.weight for o in origins)
    current = [0] * len(origins)
    schedule = []
    for _unused1 in range(total):
        best = 0
        for i, o in enumerate(origins):
            current[i] += o.weight
            if current[i] > current[best]:
                best = i
        current[best] -= total
        schedule.append(origins[best])
    return schedule


class RoundRobin:
    name = "round-robin"

    def __init__(self):
        self.schedule = ()
        self.position = -1

    def rebuild(self, tier, members):
        self.schedule = tuple(smooth_schedule(tier))

    def pick(self, key, exclude=None):
        schedule = self.schedule
        n = len(schedule)
        if not n:
            return None
        self.position = position = (self.position + 1) % n
        origin = schedule[position]
        if exclude is None or origin not in exclude:
            return origin
        for i in range(1, n):
            origin = schedule[(position + i) % n]
            if origin not in exclude:
                return origin
        return None


class LeastConnections:
    name = "least-connections"

    def __init__(self):
        self.tier = ()
        self.start = -1

    def rebuild(self, tier, members):
        self.tier = tuple(tier)

    def pick(self, key, exclude=None):
        tier = self.tier
        n = len(tier)
        if not n:
            return None
        self.start = start = (self.start + 1) % n
        best = None
        for i in range(n):
            o = tier[(start + i) % n]
            if exclude is not None and o in exclude:
                continue
            # active/weight, compared without dividing
            if best is None or o.active * best.weight < best.active * o.weight:
                best = o
        return best


class SourceHash:
    name = "source-hash"

    def __init__(self):
        self.live = frozenset()
        self.ring_of = None   # the members the ring was built for
        self.points = []      # sorted ring positions
        self.owners = []      # the origin at each position

    def rebuild(self, tier, members):
        self.live = frozenset(tier)
        identity = tuple((o.label, o.weight) for o in members)
        if identity == self.ring_of:
            return
        ring = []
        for o in members:
            label = o.label.encode()
            for i in range(POINTS_PER_WEIGHT * o.weight):
                ring.append((hash64(label + b"#%d" % i), o.label, o))
        ring.sort(key=lambda item: item[:2])
        self.points = [item[0] for item in ring]
        self.owners = [item[2] for item in ring]
        self.ring_of = identity

    def pick(self, key, exclude=None):
        """The first live origin clockwise from KEY's position (KEY: the client's address)."""
        owners, live = self.owners, self.live
        n = len(owners)
        if not n or not live:
            return None
        start = bisect.bisect(self.points, hash64(key.encode()))
        for i in range(n):
            o = owners[(start + i) % n]
            if o in live and (exclude is None or o not in exclude):
                return o
        return None


METHODS = {cls.name: cls for cls in (RoundRobin, LeastConnections, SourceHash)}
