"""`segkd pipeline`: teacher -> distilled student -> exported artifacts -> eval, bench, report.

Orchestration sits above the three stages (cli -> pipeline -> {distill, export, runtime});
the stages never import it.
"""
