"""Training: the loop as hooks (:mod:`training.trainer`), the training run a script starts (:mod:`training.run`),
the optimiser and schedules (:mod:`training.optim`) and the losses (:mod:`training.losses`, the Dice-CE attacks use too)."""
