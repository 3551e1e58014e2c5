"""Quality gates: the metrics a run reports and the rules a step's gate holds them to."""
