"""The server side of a run: the round loop, how a round's fits travel (in the clear or masked), the run's records,
its round checkpoints and the checks before any model work."""
