"""The Atelier engine: model loading, generation modes, the Recipe.

Kept free of heavy imports so that `storage` can import `pipelines.recipe` without torch.
"""
