"""The bot: a pure core, the store, one service per concept, execution, and the doors."""
