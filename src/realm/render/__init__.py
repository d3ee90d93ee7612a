"""Seeing listener motion: the arkit58 face (:mod:`.face`), side-by-side videos (:mod:`.video`)
and plots of trajectories and REALM's gate and attention (:mod:`.plots`). See docs/rendering.md."""
