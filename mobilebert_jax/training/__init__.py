"""Training: mesh and sharding rules, optimizers, sharded train state with orbax, steps and `fit`, objectives."""
