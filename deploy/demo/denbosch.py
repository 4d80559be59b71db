#!/usr/bin/env python3
"""A demo neighbourhood: 's-Hertogenbosch, a few thousand residents in a dozen
neighbourhood groups, written as the JSON Lines directory format that
`buurtbusctl load` reads (see docs/contracts.md).

Neighbourhood centres are real coordinates (approximate centroids). Group
memberships follow the field research (shared/seeds, section 3.1.1): one
group 44 %, two 38 %, three 13 %, four or more 5 %. Older residents lean to
e-mail and the digest, younger ones to push for their own street only.
Deterministic for a given --seed. Standard library only.
"""
import argparse
import json
import math
import random
import sys

BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"

# name, lat, lon, radius of the neighbourhood in metres, residents weight
NEIGHBOURHOODS = [
    ("Binnenstad", 51.6880, 5.3040, 700, 1.4),
    ("De Muntel", 51.6985, 5.3125, 450, 1.0),
    ("Het Zand", 51.6928, 5.2935, 500, 0.9),
    ("Graafsewijk", 51.6968, 5.3255, 600, 1.0),
    ("Hintham", 51.6993, 5.3470, 700, 0.9),
    ("Rosmalen Centrum", 51.7165, 5.3655, 800, 1.2),
    ("Maaspoort", 51.7230, 5.3055, 900, 1.1),
    ("Orthen", 51.7085, 5.3110, 500, 0.6),
    ("Boschveld", 51.6995, 5.2945, 400, 0.7),
    ("Empel", 51.7310, 5.3255, 700, 0.6),
    ("Kruiskamp", 51.6955, 5.2665, 600, 0.9),
    ("Engelen", 51.7200, 5.2630, 600, 0.4),
]

CATEGORIES = ["burglary", "suspicious_person", "suspicious_vehicle", "fire", "nuisance",
              "traffic", "missing_person", "other"]
FIRST = ["Anna", "Bas", "Carla", "Daan", "Eva", "Fleur", "Gijs", "Hanna", "Iris", "Jan", "Kees",
         "Lotte", "Mila", "Noah", "Olaf", "Pien", "Ruben", "Sanne", "Tim", "Vera", "Wim", "Yara",
         "Ahmed", "Fatma", "Piotr", "Ayla"]


def geohash(lat, lon, precision):
    lat_lo, lat_hi, lon_lo, lon_hi = -90.0, 90.0, -180.0, 180.0
    bits, ch, even, out = 0, 0, True, []
    while len(out) < precision:
        if even:
            mid = (lon_lo + lon_hi) / 2
            ch = ch * 2 + (lon >= mid)
            lon_lo, lon_hi = (mid, lon_hi) if lon >= mid else (lon_lo, mid)
        else:
            mid = (lat_lo + lat_hi) / 2
            ch = ch * 2 + (lat >= mid)
            lat_lo, lat_hi = (mid, lat_hi) if lat >= mid else (lat_lo, mid)
        even = not even
        bits += 1
        if bits == 5:
            out.append(BASE32[ch])
            bits, ch = 0, 0
    return "".join(out)


def offset(lat, lon, dn, de):
    """lat/lon moved dn metres north and de metres east."""
    return (lat + dn / 111320.0, lon + de / (111320.0 * math.cos(math.radians(lat))))


def cells_around(lat, lon, radius, precision=7):
    """Geohash cells covering a square of the given radius (a group's area)."""
    step = {6: 300, 7: 70}[precision]
    cells = set()
    n = int(radius / step) + 1
    for i in range(-n, n + 1):
        for j in range(-n, n + 1):
            if math.hypot(i * step, j * step) <= radius + step:
                cells.add(geohash(*offset(lat, lon, i * step, j * step), precision))
    return sorted(cells)


def groups_per_user(rng):
    r = rng.random()
    if r < 0.44:
        return 1
    if r < 0.82:
        return 2
    if r < 0.95:
        return 3
    return rng.randint(4, min(13, len(NEIGHBOURHOODS)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--first-user-id", type=int, default=1000)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    out = sys.stdout

    # Groups: one per neighbourhood. The city centre's group is run with the
    # police: in-progress crime only. Two groups allow public summaries.
    for gid, (name, lat, lon, radius, _) in enumerate(NEIGHBOURHOODS, start=1):
        policy = {}
        if name == "Binnenstad":
            policy = {"categories": ["burglary", "suspicious_person", "suspicious_vehicle"],
                      "min_urgency": "in_progress"}
        elif name == "Rosmalen Centrum":
            policy = {"sources": ["resident", "police", "municipality"]}
        if name in ("De Muntel", "Maaspoort"):
            policy["public_posting"] = True
        group = {"id": gid, "name": name, "cells": cells_around(lat, lon, radius),
                 "location_precision": 7}
        if policy:
            group["policy"] = policy
        out.write(json.dumps({"group": group}) + "\n")

    weights = [n[4] for n in NEIGHBOURHOODS]
    memberships = []
    for k in range(args.users):
        uid = args.first_user_id + k
        home = rng.choices(range(len(NEIGHBOURHOODS)), weights)[0]
        name, lat, lon, radius, _ = NEIGHBOURHOODS[home]
        d = abs(rng.gauss(0, radius / 2))
        a = rng.uniform(0, 2 * math.pi)
        hlat, hlon = offset(lat, lon, d * math.cos(a), d * math.sin(a))
        older = rng.random() < 0.4
        locale = rng.choices(["nl", "en", "de"], [0.86, 0.10, 0.04])[0]
        user = {"id": uid, "screen_name": "%s%d" % (rng.choice(FIRST), uid % 997),
                "locale": locale, "time_zone": "Europe/Amsterdam"}
        if rng.random() < 0.6:
            user["watch"] = {"lat": round(hlat, 6), "lon": round(hlon, 6),
                             "radius_m": rng.choice([200, 300, 500, 800])}
        prefs = {}
        if older:
            prefs = {"in_progress": ["push", "inbox", "email"], "recent": ["email", "inbox"],
                     "informational": ["digest", "inbox"], "digest_hour": 8}
        else:
            prefs = {"in_progress": ["push", "inbox"], "recent": ["push", "inbox"],
                     "informational": ["inbox"]}
            if rng.random() < 0.3:
                prefs["min_urgency"] = "recent"
        if rng.random() < 0.3:
            prefs["quiet"] = {"from": "23:00", "to": "07:00"}
        if rng.random() < 0.2:
            prefs["categories"] = rng.sample(CATEGORIES, 4)
        if rng.random() < 0.1:
            prefs["max_per_hour"] = 3
        user["prefs"] = prefs
        out.write(json.dumps({"user": user}) + "\n")
        mine = {home}
        want = groups_per_user(rng)
        # Further groups: the nearest neighbourhoods first.
        by_distance = sorted(range(len(NEIGHBOURHOODS)), key=lambda g: math.hypot(
            NEIGHBOURHOODS[g][1] - lat, NEIGHBOURHOODS[g][2] - lon))
        for g in by_distance:
            if len(mine) >= want:
                break
            mine.add(g)
        memberships += [(uid, g + 1) for g in sorted(mine)]
    for uid, gid in memberships:
        out.write(json.dumps({"member": {"user": uid, "group": gid}}) + "\n")


if __name__ == "__main__":
    main()
