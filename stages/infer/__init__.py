"""Step 2: grouped-query inference, the history once and N condition tokens -> user_knowledge, item_knowledge."""
