"""Decentralized adapter windows (seed 004): planned contributors train LoRA adapters on slices of pinned data,
a validator disposes of each contribution, accepted ones aggregate exactly, and a gate promotes or holds.

:mod:`lit_psion.core.windows` holds the framework-free truth (states, plans, reason codes); this package
holds the parts that need torch, as plain functions both engines share: :mod:`~.program` (the program on
disk, planning), :mod:`~.contribute` (a contributor), :mod:`~.validate` (seal, dispositions),
:mod:`~.aggregate` (exact aggregation, gate, reconcile), :mod:`~.coordinator` (one machine: ``window run``)
and :mod:`~.flower` (many machines: the same roles as a Flower app). docs/windows.md is the guide.
"""
