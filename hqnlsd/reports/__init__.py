"""``hqn_report``'s analysis of ``usage.jsonl``: reading records (`records`,
`sources`), the figures (`analysis`, pure), and their rendering as CSV, charts
and HTML (`tables`, `charts`, `html`)."""
