package foo

import rego.v1

# The "rest of the policy" batch.rego assumes: analysts see the sales schema, and of its
# customers table only the columns id and region.
default allow := false

allow if {
	input.action.operation in {"FilterTables", "SelectFromColumns"}
	input.action.resource.table.schemaName == "sales"
	input.action.resource.table.tableName != "customers"
}

allow if {
	input.action.operation == "FilterColumns"
	input.action.resource.table.tableName == "customers"
	input.action.resource.table.column in {"id", "region"}
}
