"""Trainers this project did not launch, under the closed loop through the
client API (backend.client): `hf` for the Hugging Face Trainer."""
