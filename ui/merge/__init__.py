"""The Merge tab: the recipe form, the merge panel (Check, Merge, Stop, download, push), weights from data."""
