"""Prefect tasks: one side effect each (stage, submit, poll, collect).

Tasks take ids, not ORM objects, and commit their own transaction.
"""
