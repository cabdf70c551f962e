"""The merge itself: recipe, method parameters, the plan and its resource check, the streaming engine."""
