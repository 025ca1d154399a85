"""What every fine-tuning method shares."""
