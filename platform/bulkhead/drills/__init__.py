"""Drills: real faults (kill, cut, wipe) on one region's sandbox hosts, and what they cost in time and rows."""
