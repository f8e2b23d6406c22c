"""Labelled image sources for episodic meta-training and evaluation."""
