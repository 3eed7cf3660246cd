"""What the sensor, the operators, the notifier and the decorator share."""
