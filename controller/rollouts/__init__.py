"""Rollouts: a model version (or the best fitting variant of a release) goes to the devices
a selector matches in waves — a canary first — each gated on the health the devices
report; a failure past the threshold halts the rollout and rolls its devices back.

``strategy`` (how waves and gates are set), ``plan`` (who gets what, in which wave, and
why others are left out), ``health`` (judging one device), ``engine`` (create, advance,
pause/resume/abort/rollback, devices enrolling later), ``pins`` (holding devices at a
version).
"""
