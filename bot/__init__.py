"""The Slack bot: routines, runs, the service layer that holds the rules, and its adapters."""
