"""What runs on a rented node, with nothing of the controller in it: the node agent, notice handling and the
Ray Train worker function. Imports cluster (storage, processes) and train_core, never orchestrator."""
