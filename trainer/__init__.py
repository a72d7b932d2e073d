"""The trainer: turns recorded failures into better reflections.

`data` picks training and evaluation items from episodes, `grpo` runs one GRPO round with
reflection-only credit, `gate` decides whether the new adapter replaces the active one, and
`worker` runs rounds from the store; under `accelerate launch`, `distributed` lets the main
process lead and the others train with it. The trainer imports `r3` and `verifiers`, never `server`.
"""
