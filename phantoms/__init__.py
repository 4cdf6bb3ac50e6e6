"""Synthetic head-CT phantoms: analytic anatomy, hemorrhages, scanner effects, RSNA writing.

``phantoms.synth`` is the entry point (:func:`phantoms.synth.generate`,
:func:`phantoms.synth.synth_study`); ``phantoms.presets`` holds the parameter ranges every
drawn value comes from (``train`` for training, ``heldout`` for out-of-family evaluation).
"""
