"""The learning system of the seed: components, world model, imagination, update, schedule."""
