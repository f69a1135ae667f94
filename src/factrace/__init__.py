"""factrace: trace language-model outputs back to pretraining data (TrackStar)."""
