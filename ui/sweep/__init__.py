"""The α-sweep tab: its panel and its plot."""
